"""An independent DKIM and ARC verifier for the tests: Perl's Mail::DKIM (Debian's
libmail-dkim-perl), a separate implementation from dkimpy, with its DNS lookups sent straight to
the test's nsd.

    perl_arc_verify(raw_message, server)   # -> "pass", "fail" or "none", then Mail::DKIM's detail
    perl_dkim_verify(raw_message, server)  # -> the DKIM result, one "d=… s=… result" a signature
"""

from __future__ import annotations

import subprocess

from tests.support.dns_server import DnsServer

_VERIFY = r"""
use strict;
use Mail::DKIM::ARC::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;
my $resolver = Net::DNS::Resolver->new(
    nameservers => ["127.0.0.1"], port => $ARGV[0], recurse => 0, udp_timeout => 3);
Mail::DKIM::DNS::resolver($resolver);
my $verifier = Mail::DKIM::ARC::Verifier->new(Strict => 1);
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\015?\012/\015\012/; $verifier->PRINT($line); }
$verifier->CLOSE;
print $verifier->result, "\n", ($verifier->result_detail // ""), "\n";
"""


def perl_arc_verify(raw: bytes, server: DnsServer) -> tuple[str, str]:
    """Mail::DKIM's ARC chain result for ``raw`` and its detail text."""
    done = subprocess.run(
        ["perl", "-e", _VERIFY, str(server.port)],
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result, _, detail = done.stdout.decode().partition("\n")
    return result.strip(), detail.strip()


_VERIFY_DKIM = r"""
use strict;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;
my $resolver = Net::DNS::Resolver->new(
    nameservers => ["127.0.0.1"], port => $ARGV[0], recurse => 0, udp_timeout => 3);
Mail::DKIM::DNS::resolver($resolver);
my $verifier = Mail::DKIM::Verifier->new(Strict => 1);
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\015?\012/\015\012/; $verifier->PRINT($line); }
$verifier->CLOSE;
print $verifier->result, "\n";
foreach my $signature ($verifier->signatures) {
    print "d=", $signature->domain, " s=", $signature->selector, " ", $signature->result, "\n";
}
"""


def perl_dkim_verify(raw: bytes, server: DnsServer) -> tuple[str, list[str]]:
    """Mail::DKIM's overall DKIM result for ``raw`` ("pass" when a signature verifies, "none"
    without one) and one ``d=DOMAIN s=SELECTOR RESULT`` line per signature. Debian's Mail::DKIM
    (1.20230212) verifies RSA signatures only: an Ed25519 one is "invalid" here."""
    done = subprocess.run(
        ["perl", "-e", _VERIFY_DKIM, str(server.port)],
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result, *signatures = done.stdout.decode().splitlines()
    return result.strip(), signatures
