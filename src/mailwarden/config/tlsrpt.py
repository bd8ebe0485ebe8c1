"""``[tlsrpt]``: SMTP TLS reporting (RFC 8460), what the node counts and the reports it sends.

docs/configuration.md describes every key; docs/delivery.md what is counted and sent.
The names left unset default to the node's host name (``[node] hostname``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mailwarden.config.models import _MODEL, HostName, RelativePath


class TlsRptSettings(BaseModel):
    """``[tlsrpt]``: on by default (counting costs nothing a delivery notices)."""

    model_config = _MODEL

    enabled: bool = Field(
        True, description="Count outbound TLS outcomes and send the daily reports."
    )
    send: bool = Field(True, description="Send yesterday's reports once a day (false: only count).")
    organization_name: str | None = Field(
        None, min_length=1, description="The report's organization-name; default hostname."
    )
    contact_info: str | None = Field(
        None, min_length=3, description="The report's contact-info; default postmaster@hostname."
    )
    submitter: HostName | None = Field(
        None, description="TLS-Report-Submitter and the file name's sender; default hostname."
    )
    sender: str | None = Field(
        None,
        min_length=3,
        description="From and MAIL FROM of mailed reports; default tlsrpt-noreply@hostname.",
    )
    flush_interval: float = Field(
        5.0, gt=0, le=300, description="Seconds between writes of the counts to tlsrpt.sqlite."
    )
    max_delay: float = Field(
        3600.0, ge=0, le=6 * 3600, description="Most seconds after 00:00 UTC before sending."
    )
    https_timeout: float = Field(30.0, gt=0, le=600, description="Seconds a POST may take.")
    https_ca_file: RelativePath | None = Field(
        None, description="CA bundle for the https report receivers; default the system's."
    )

    def organization(self, hostname: str) -> str:
        return self.organization_name or hostname

    def contact(self, hostname: str) -> str:
        return self.contact_info or f"postmaster@{hostname}"

    def submitter_name(self, hostname: str) -> str:
        return self.submitter or hostname

    def from_address(self, hostname: str) -> str:
        return self.sender or f"tlsrpt-noreply@{hostname}"
