"""The mailwright CLI against a real SQLite store in a tmp data_dir."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path


import mailwright
from mailwright.admin.service import AdminService
from mailwright.cli import main as cli_main
from mailwright.config import load_settings
from mailwright.queue.model import Envelope, RecipientRequest


def with_service(config: Path, fn):
    """Run ``fn(service)`` against the store the config names (as the server would)."""
    async def go():
        store = cli_main.open_settings_store(load_settings(config, {}))
        await store.open()
        try:
            return await fn(AdminService(store), store)
        finally:
            await store.close()
    return asyncio.run(go())


def assert_no_hash(*texts: str) -> None:
    for t in texts:
        assert "scrypt$" not in t


# ---------------------------------------------------------------- basics

def test_version(capsys):
    assert cli_main.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mailwright {mailwright.__version__}"


def test_usage_error_exit_2(run, capsys):
    assert run("domain").rc == 2
    assert run("frobnicate").rc == 2
    assert run("user", "add", "a@example.test", "--quota", "lots").rc == 2
    assert "invalid size" in capsys.readouterr().err


def test_local_domains_seeded(run):
    r = run("domain", "list")
    assert r.rc == 0 and r.out.split() == ["example.test"]


def test_config_option_after_command(run, config):
    r = run("domain", "list", "-c", str(config), cfg=None)
    assert r.rc == 0 and r.out.split() == ["example.test"]


# ---------------------------------------------------------------- domains

def test_domain_round_trip(run):
    r = run("domain", "add", "Example.ORG")
    assert (r.rc, r.out.strip()) == (0, "added domain example.org")
    assert json.loads(run("domain", "list", "--json").out) == ["example.org", "example.test"]
    r = run("domain", "add", "example.org")
    assert r.rc == 1 and "already exists" in r.err
    assert run("domain", "add", "not a domain").rc == 2
    assert run("domain", "remove", "example.org").rc == 0
    assert run("domain", "list").out.split() == ["example.test"]
    r = run("domain", "remove", "example.org")
    assert r.rc == 1 and "does not exist" in r.err


def test_domain_remove_in_use(run):
    assert run("user", "add", "a@example.test").rc == 0
    r = run("domain", "remove", "example.test")
    assert r.rc == 1 and "1 mailbox(es)" in r.err and "--force" in r.err
    r = run("domain", "remove", "example.test", "--force")
    assert r.rc == 0 and "added again at the next start" in r.err


# ---------------------------------------------------------------- users

def test_user_round_trip(run):
    r = run("user", "add", "Bob@Example.Test", "--quota", "10M")
    assert r.rc == 0 and "bob@example.test" in r.out and "no password" in r.out
    r = run("user", "list", "--json")
    assert json.loads(r.out) == [{"address": "bob@example.test", "has_password": False,
                                  "quota_bytes": 10 * 1024 * 1024,
                                  "created_at": json.loads(r.out)[0]["created_at"]}]
    r = run("user", "add", "bob@example.test")
    assert r.rc == 1 and "already exists" in r.err
    r = run("user", "list")
    assert "bob@example.test" in r.out and "10.0MiB" in r.out
    assert run("user", "quota", "bob@example.test", "0").rc == 0
    assert json.loads(run("user", "list", "--json").out)[0]["quota_bytes"] == 0
    assert run("user", "remove", "BOB@example.test").rc == 0
    assert json.loads(run("user", "list", "--json").out) == []
    r = run("user", "remove", "bob@example.test")
    assert r.rc == 1 and "does not exist" in r.err


def test_user_list_by_domain(run):
    run("domain", "add", "other.test")
    run("user", "add", "a@example.test")
    run("user", "add", "b@other.test")
    assert [u["address"] for u in json.loads(run("user", "list", "other.test", "--json").out)] \
        == ["b@other.test"]
    assert len(json.loads(run("user", "list", "--json").out)) == 2
    assert run("user", "list", "nowhere.test").rc == 1


def test_user_errors(run):
    r = run("user", "add", "a@elsewhere.test")
    assert r.rc == 1 and "not a local domain" in r.err
    r = run("user", "add", "not-an-address")
    assert r.rc == 2 and "invalid address" in r.err
    r = run("user", "add", "a%b@example.test")
    assert r.rc == 2


def test_password_stdin(run, config):
    r = run("user", "add", "alice@example.test", "--password-stdin", input="s3cret pass\n")
    assert r.rc == 0
    lst = run("user", "list", "--json")
    assert json.loads(lst.out)[0]["has_password"] is True
    assert_no_hash(r.out, r.err, lst.out, run("user", "list").out)

    async def check(svc, store):
        return (await svc.check_password("alice@example.test", "s3cret pass"),
                await svc.check_password("alice@example.test", "wrong"),
                (await store.get_mailbox("alice@example.test")).password_hash)
    ok, bad, stored = with_service(config, check)
    assert ok and not bad and stored.startswith("scrypt$16384$8$1$")

    r = run("user", "passwd", "alice@example.test", "--password-stdin", input="new\r\n")
    assert r.rc == 0
    ok, bad, _ = with_service(config, lambda s, st: asyncio.gather(
        s.check_password("alice@example.test", "new"),
        s.check_password("alice@example.test", "s3cret pass"), asyncio.sleep(0)))
    assert ok and not bad

    assert run("user", "passwd", "alice@example.test", "--clear").rc == 0
    assert json.loads(run("user", "list", "--json").out)[0]["has_password"] is False


def test_password_stdin_empty_is_usage_error(run):
    r = run("user", "add", "a@example.test", "--password-stdin", input="")
    assert r.rc == 2 and "no password" in r.err
    assert json.loads(run("user", "list", "--json").out) == []


def test_passwd_needs_a_password(run):
    run("user", "add", "a@example.test")
    assert run("user", "passwd", "a@example.test").rc == 2          # no tty, no stdin flag
    r = run("user", "passwd", "nobody@example.test", "--password-stdin", input="x\n")
    assert r.rc == 1 and "does not exist" in r.err


def test_password_prompt_on_tty(run, monkeypatch):
    answers = iter(["pw1", "pw1", "pw2", "other"])
    monkeypatch.setattr(cli_main.getpass, "getpass", lambda prompt="": next(answers))
    assert run("user", "add", "a@example.test", tty=True).rc == 0
    assert json.loads(run("user", "list", "--json").out)[0]["has_password"] is True
    r = run("user", "passwd", "a@example.test", tty=True)
    assert r.rc == 2 and "do not match" in r.err


# ---------------------------------------------------------------- aliases

def test_alias_round_trip(run):
    run("user", "add", "alice@example.test")
    r = run("alias", "add", "Postmaster@example.test", "alice@example.test", "ext@remote.example")
    assert r.rc == 0
    assert run("alias", "add", "@example.test", "alice@example.test").rc == 0
    data = json.loads(run("alias", "list", "--json").out)
    assert data == [{"source": "@example.test", "targets": ["alice@example.test"]},
                    {"source": "postmaster@example.test",
                     "targets": ["alice@example.test", "ext@remote.example"]}]
    assert "postmaster@example.test  alice@example.test, ext@remote.example" in \
        run("alias", "list").out
    r = run("alias", "add", "postmaster@example.test", "alice@example.test")
    assert r.rc == 1 and "already exists" in r.err
    assert run("alias", "remove", "@example.test").rc == 0
    assert run("alias", "remove", "postmaster@example.test").rc == 0
    assert json.loads(run("alias", "list", "--json").out) == []
    assert run("alias", "remove", "postmaster@example.test").rc == 1


def test_alias_errors(run):
    run("user", "add", "alice@example.test")
    r = run("alias", "add", "x@remote.example", "alice@example.test")
    assert r.rc == 1 and "not a local domain" in r.err
    r = run("alias", "add", "x@example.test", "ghost@example.test")
    assert r.rc == 1 and "neither a mailbox nor an alias" in r.err
    r = run("alias", "add", "alice@example.test", "ext@remote.example")
    assert r.rc == 1 and "is a mailbox" in r.err
    r = run("alias", "add", "x@example.test", "bad address")
    assert r.rc == 2
    assert run("alias", "add", "a@example.test", "alice@example.test").rc == 0
    assert run("alias", "add", "b@example.test", "a@example.test").rc == 0
    assert run("alias", "remove", "a@example.test").rc == 0
    r = run("alias", "add", "a@example.test", "b@example.test")             # a -> b -> a
    assert r.rc == 1 and "loop: a@example.test -> b@example.test -> a@example.test" in r.err
    assert run("alias", "add", "x@example.test").rc == 2                     # no target


# ---------------------------------------------------------------- queue

def commit(config: Path, sender: str, rcpts: list[str]) -> str:
    async def go(svc, store):
        blob = store.new_blob()
        blob.write(b"Subject: hi\r\n\r\nbody\r\n")
        env = Envelope(sender=sender, recipients=[RecipientRequest(r) for r in rcpts],
                       received_at=time.time(), client_ip="192.0.2.1", helo="client.example",
                       size=blob.size)
        return await store.commit_message(env, blob)
    return with_service(config, go)


def test_queue_list_and_show(run, config):
    r = run("queue", "list")
    assert r.rc == 0 and "queue is empty" in r.out
    assert json.loads(run("queue", "list", "--json").out) == []
    qid = commit(config, "from@remote.example", ["a@example.test", "b@remote.example"])
    r = run("queue", "list")
    assert qid in r.out and "from@remote.example" in r.out and "queued:2" in r.out
    data = json.loads(run("queue", "list", "--json", "--state", "queued").out)
    assert [m["queue_id"] for m in data] == [qid]
    assert [x["state"] for x in data[0]["recipients"]] == ["queued", "queued"]
    assert json.loads(run("queue", "list", "--json", "--state", "failed").out) == []
    shown = json.loads(run("queue", "show", qid, "--json").out)
    assert shown["envelope"]["sender"] == "from@remote.example"
    assert shown["envelope"]["client_ip"] == "192.0.2.1"
    assert {x["address"] for x in shown["recipients"]} == {"a@example.test", "b@remote.example"}
    r = run("queue", "show", qid)
    assert r.rc == 0 and "client.example" in r.out and "b@remote.example" in r.out
    r = run("queue", "show", "NOSUCHID")
    assert r.rc == 1 and "not in the queue" in r.err
    assert run("queue", "list", "--state", "bogus").rc == 2


def test_queue_hold_release_delete(run, config):
    qid = commit(config, "", ["a@example.test"])
    assert "held 1" in run("queue", "hold", qid).out
    assert json.loads(run("queue", "show", qid, "--json").out)["recipients"][0]["state"] == "held"
    assert [m["queue_id"] for m in json.loads(run("queue", "list", "--state", "held",
                                                  "--json").out)] == [qid]
    assert "released 1" in run("queue", "release", qid).out
    assert run("queue", "delete", qid).rc == 0
    assert run("queue", "show", qid).rc == 1
    assert run("queue", "delete", qid).rc == 1
    assert run("queue", "hold", qid).rc == 1


# ---------------------------------------------------------------- config

def test_config_check_prints_effective_config(run, config):
    r = run("config", "check")
    assert r.rc == 0
    import tomllib
    from mailwright.config import parse_settings
    assert parse_settings(tomllib.loads(r.out), env={}) == load_settings(config, {})
    data = json.loads(run("config", "check", "--json").out)
    assert data["ok"] is True and data["settings"]["limits"]["max_recipients"] == 100


def test_config_check_missing_cert(run, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n[tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n')
    r = run("config", "check", cfg=cfg)
    assert r.rc == 2 and "tls.cert_file: file not found" in r.err


def test_bad_key_exits_2_naming_the_key(run, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[limits]\nmax_message_size = "big"\n')
    for args in (["config", "check"], ["domain", "list"], ["serve"]):
        r = run(*args, cfg=cfg)
        assert r.rc == 2
        assert f"{cfg}: limits.max_message_size: expected a positive integer, got 'big'" in r.err
        assert r.out == ""


def test_serve_calls_app_serve(run, config, monkeypatch):
    seen = {}

    async def serve(settings):
        seen["settings"] = settings
        return 0
    fake = types.ModuleType("mailwright.app")
    fake.serve = serve
    monkeypatch.setitem(sys.modules, "mailwright.app", fake)
    monkeypatch.setattr(mailwright, "app", fake, raising=False)
    assert run("serve").rc == 0
    assert seen["settings"].hostname == "mx.example.test"

    def serve2(settings, config_path=None):
        seen["path"] = config_path
        return 3
    fake.serve = serve2
    assert run("serve").rc == 3
    assert seen["path"] == str(config)


# ---------------------------------------------------------------- real processes

def cli_proc(*args: str, input: str | None = None, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT")}
    return subprocess.run([sys.executable, "-m", "mailwright.cli.main", *args], input=input,
                          capture_output=True, text=True, timeout=60, env=env, **kw)


def test_python_dash_m_round_trip(config):
    c = ["-c", str(config)]
    assert cli_proc(*c, "user", "add", "p@example.test", "--password-stdin",
                    input="pw\n").returncode == 0
    r = cli_proc(*c, "user", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["address"] == "p@example.test"
    assert_no_hash(r.stdout)


def test_python_dash_m_bad_key(tmp_path):
    cfg = tmp_path / "mailwright.toml"
    cfg.write_text("[limits]\nmax_mesage_size = 5\n")
    r = cli_proc("-c", "mailwright.toml", "config", "check", cwd=tmp_path)
    assert r.returncode == 2
    assert "mailwright.toml: limits.max_mesage_size: unknown key (did you mean " \
           "'max_message_size'?)" in r.stderr


def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "mailwright"
    assert script.exists(), f"{script}: the console script is not installed (make install)"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("mailwright ")
    r = subprocess.run([str(script), "domain", "list"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT")})
    assert r.returncode == 0 and "localhost" in r.stdout.split()
    assert (tmp_path / "mailwright-data" / "mailwright.db").exists()
