"""SMTP TLS reporting (RFC 8460): every outbound TLS outcome counted per policy domain and
UTC day (``recorder.py`` in memory, ``store.py`` on disk), and the daily aggregate reports
built (``report.py``), addressed by the domain's ``_smtp._tls`` record (``discovery.py``) and
sent by mail or HTTPS (``submit.py``, ``send.py``, ``daily.py``)."""
