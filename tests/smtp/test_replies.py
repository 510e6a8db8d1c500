from mailwright.smtp.replies import Reply


def test_single_line_reply_carries_enhanced_code():
    assert Reply(250, "2.1.0", "Sender OK").to_bytes() == b"250 2.1.0 Sender OK\r\n"


def test_multi_line_reply_uses_dash_on_all_but_last_line():
    r = Reply(214, "2.0.0", ("Commands:", "EHLO HELO"))
    assert r.to_bytes() == b"214-2.0.0 Commands:\r\n214 2.0.0 EHLO HELO\r\n"
    assert r.is_positive and not r.is_transient
