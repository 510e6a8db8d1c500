import pytest

from support import MailServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One running server for a test module: domain example.test, mailboxes alice and bob."""
    srv = MailServer(tmp_path_factory.mktemp("srv"), domains=("example.test",))
    srv.cli("user", "add", "alice@example.test")
    srv.cli("user", "add", "bob@example.test")
    srv.start()
    yield srv
    srv.stop()
