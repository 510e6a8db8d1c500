"""rfc5322_date (message/trace.py) writes what email.utils.format_datetime writes."""
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from mailwright.message.trace import address_literal, rfc5322_date


@pytest.mark.parametrize("ts", [0, 1.9, 951782400, 1136214245, 1_700_000_000.5,
                                2_147_483_648, 4_102_444_799, -86_400])
def test_rfc5322_date_matches_the_stdlib(ts):
    assert rfc5322_date(ts) == format_datetime(datetime.fromtimestamp(int(ts), timezone.utc))


def test_rfc5322_date_example():
    assert rfc5322_date(1136214245) == "Mon, 02 Jan 2006 15:04:05 +0000"


def test_address_literal_is_stable_when_cached():
    for _ in range(2):
        assert address_literal("192.0.2.1") == "[192.0.2.1]"
        assert address_literal("::ffff:192.0.2.1") == "[192.0.2.1]"
        assert address_literal("2001:db8::1") == "[IPv6:2001:db8::1]"
        assert address_literal("bad)(") == "[bad??]"
