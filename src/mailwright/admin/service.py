"""The one admin service: domains, mailboxes (users), aliases, send-as grants and the queue.

What: ``AdminService(store)`` validates operator input and applies it to a ``Store``. The CLI
(``cli/main.py``) and the web page are thin faces over it (GUIDE idea 15): they parse
arguments or forms, call one method, and format the result or the ``AdminError``.

How: every method is async and goes through the ``Store`` protocol only, so it works while
the server is stopped (the CLI opens the store itself) or inside the running server. Password
hashing runs in a thread (``asyncio.to_thread``) so it never blocks an event loop.

Invariants:
* Addresses and domains are stored lower-case, domains as A-labels (IDNA); input is
  checked before anything is written, and errors say which input is wrong and why.
* A mailbox or alias source is always in a local domain (one the store lists); an address is
  never both a mailbox and an alias source; alias targets in local domains must resolve
  (mailbox, alias, sub-address of a mailbox or a catch-all) and aliases never form a loop.
* Nothing this service returns carries a password hash: ``UserInfo`` only says whether a
  password is set.  Setting a password stores its scrypt hash and its SCRAM-SHA-256
  verifier (RFC 7677) together, so every SASL mechanism works with the same password.
* A send-as grant (``grant_send_as``) names an existing mailbox and an address or
  ``*@domain``; the submission listeners let the mailbox use it as a sender.
* Errors are ``AdminError`` subclasses: ``InvalidInput`` (bad syntax: a usage error, exit 2 in
  the CLI), ``NotFound``, ``AlreadyExists``, ``Conflict`` (operation refused: exit 1).
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..queue.model import QueuedMessage, RecipientState
from ..store.base import DkimKey, DuplicateError, Mailbox, NotFoundError, Store
from ..smtp.sasl import derive_scram_verifier
from .passwords import hash_password, verify_password

if TYPE_CHECKING:                 # queue_ops imports this module
    from .queue_ops import QueueOps

__all__ = [
    "AdminService", "AdminError", "InvalidInput", "NotFound", "AlreadyExists", "Conflict",
    "UserInfo", "AliasInfo", "DkimKeyInfo", "normalise_domain", "normalise_address", "parse_state",
    "message_to_dict",
]


_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                       r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class DkimKeyInfo:
    """A DKIM key as the operator sees it: never the private key."""
    domain: str
    selector: str
    algorithm: str
    created_at: float
    active: bool
    txt: str            # the TXT value to publish
    zone_line: str      # the same as a BIND master-file line

    @classmethod
    def from_key(cls, key: DkimKey) -> "DkimKeyInfo":
        from ..mailauth.dkim_keys import dns_txt_record, zone_line
        txt = dns_txt_record(key.private_key.encode("ascii"))
        return cls(key.domain, key.selector, key.algorithm, key.created_at, key.active, txt,
                   zone_line(key.domain, key.selector, txt))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AdminError(Exception):
    """An admin operation could not be done; the message is meant for the operator."""
    exit_code = 1


class InvalidInput(AdminError):
    """Malformed input (address or domain syntax, bad quota...)."""
    exit_code = 2


class NotFound(AdminError):
    pass


class AlreadyExists(AdminError):
    pass


class Conflict(AdminError):
    """Refused because of other data (domain not local, domain still in use, alias loop)."""


# --------------------------------------------------------------------------- syntax

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# RFC 5322 atext; for a mailbox we also refuse routing characters (% ! are Postfix/UUCP
# relay hacks the router never matches, see routing/directory.py).
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+$")
_ROUTING_CHARS = frozenset("%!")


def normalise_domain(domain: str) -> str:
    """Lower-case A-label form of ``domain``; raises ``InvalidInput`` if it is not one."""
    if not isinstance(domain, str):
        raise InvalidInput(f"invalid domain {domain!r}")
    name = domain.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput(f"invalid domain {domain!r}") from None
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise InvalidInput(f"invalid domain {domain!r}: expected letters, digits and "
                           "hyphens in dot-separated labels")
    if name.replace(".", "").isdigit():
        raise InvalidInput(f"invalid domain {domain!r}: an IP address is not a domain")
    return name


def normalise_address(address: str, *, mailbox: bool = True) -> str:
    """``local@domain`` lower-cased, domain in A-label form. ``mailbox=True`` (for mailboxes
    and alias sources) also refuses the routing characters ``%`` and ``!``."""
    if not isinstance(address, str) or "@" not in address:
        raise InvalidInput(f"invalid address {address!r}: expected local-part@domain")
    local, _, domain = address.strip().rpartition("@")
    if not local:
        raise InvalidInput(f"invalid address {address!r}: empty local part")
    if len(local.encode()) > 64:
        raise InvalidInput(f"invalid address {address!r}: local part longer than 64 octets")
    if (local.startswith(".") or local.endswith(".") or ".." in local
            or not all(_ATEXT.match(atom) for atom in local.split("."))):
        raise InvalidInput(f"invalid address {address!r}: local part must be a dot-atom "
                           "(letters, digits and !#$%&'*+-/=?^_`{|}~ between dots)")
    if mailbox and _ROUTING_CHARS & set(local):
        raise InvalidInput(f"invalid address {address!r}: '%' and '!' are not allowed "
                           "in a local mailbox or alias name")
    try:
        domain = normalise_domain(domain)
    except InvalidInput:
        raise InvalidInput(f"invalid address {address!r}: bad domain {domain!r}") from None
    return f"{local.lower()}@{domain}"


def _alias_source(source: str) -> str:
    if isinstance(source, str) and source.strip().startswith("@"):
        return "@" + normalise_domain(source.strip()[1:])
    return normalise_address(source)


def parse_state(state: str | RecipientState | None) -> RecipientState | None:
    """A queue state filter from its name ("queued", "held", ...); None = all."""
    if state is None or isinstance(state, RecipientState):
        return state
    try:
        return RecipientState(state.lower())
    except ValueError:
        names = ", ".join(s.value for s in RecipientState)
        raise InvalidInput(f"unknown queue state {state!r}: expected one of {names}") from None


# --------------------------------------------------------------------------- results

@dataclass(frozen=True, slots=True)
class UserInfo:
    """A mailbox as shown to operators: never the password hash."""
    address: str
    has_password: bool
    quota_bytes: int            # 0 = unlimited
    created_at: float

    @classmethod
    def from_mailbox(cls, mb: Mailbox) -> "UserInfo":
        return cls(mb.address, bool(mb.password_hash), mb.quota_bytes, mb.created_at)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class AliasInfo:
    source: str                 # "user@domain" or "@domain" (catch-all)
    targets: tuple[str, ...]

    @property
    def catch_all(self) -> bool:
        return self.source.startswith("@")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "targets": list(self.targets)}


def message_to_dict(msg: QueuedMessage) -> dict[str, Any]:
    """A queued message as JSON-able data (for ``queue show --json`` and the web page)."""
    env = dataclasses.asdict(msg.envelope)
    env["recipients"] = [dataclasses.asdict(r) for r in msg.envelope.recipients]
    return {
        "queue_id": msg.queue_id,
        "envelope": env,
        "blob_path": msg.blob_path,        # "" when the body is kept in the database
        "body_inline": not msg.blob_path,
        "recipients": [{**dataclasses.asdict(r), "state": r.state.value}
                       for r in msg.recipients],
    }


# --------------------------------------------------------------------------- the service

class AdminService:
    """Validated directory and queue administration over one ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- domains

    async def ensure_domains(self, domains: Iterable[str]) -> list[str]:
        """Add each of ``domains`` the store lacks (config ``local_domains`` at start);
        returns those added."""
        existing = set(await self.store.list_domains())
        added = []
        for d in domains:
            name = normalise_domain(d)
            if name not in existing:
                try:
                    await self.store.add_domain(name)
                except DuplicateError:   # another process added it meanwhile
                    continue
                existing.add(name)
                added.append(name)
        return added

    async def add_domain(self, domain: str) -> str:
        name = normalise_domain(domain)
        if name in await self.store.list_domains():
            raise AlreadyExists(f"domain {name} already exists")
        try:
            await self.store.add_domain(name)
        except DuplicateError:
            raise AlreadyExists(f"domain {name} already exists") from None
        return name

    async def list_domains(self) -> list[str]:
        return sorted(await self.store.list_domains())

    async def remove_domain(self, domain: str, *, force: bool = False) -> str:
        """Remove a local domain. Refused while it has mailboxes or aliases, unless
        ``force``, which removes them too."""
        name = normalise_domain(domain)
        if name not in await self.store.list_domains():
            raise NotFound(f"domain {name} does not exist")
        boxes = await self.store.list_mailboxes(name)
        aliases = [a for a in await self.store.list_aliases()
                   if a.source.rpartition("@")[2] == name]
        if (boxes or aliases) and not force:
            raise Conflict(f"domain {name} still has {len(boxes)} mailbox(es) and "
                           f"{len(aliases)} alias(es); remove them first or use --force")
        for a in aliases:
            await self.store.remove_alias(a.source)
        for mb in boxes:
            await self.store.remove_mailbox(mb.address)
        if not await self.store.remove_domain(name):
            raise NotFound(f"domain {name} does not exist")
        return name

    async def _require_local(self, address: str, what: str) -> None:
        """``address`` ("user@domain" or "@domain") must be in a local domain."""
        domain = address.rpartition("@")[2]
        if domain not in await self.store.list_domains():
            raise Conflict(f"{what} {address}: domain {domain} is not a local domain "
                           f"(add it with: mailwright domain add {domain})")

    # ---- users (mailboxes)

    async def add_user(self, address: str, password: str | None = None,
                       quota: int = 0) -> UserInfo:
        """Create a mailbox. ``password`` None or "" creates it without a login."""
        addr = normalise_address(address)
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < 0:
            raise InvalidInput(f"invalid quota {quota!r}: expected bytes >= 0 (0 = unlimited)")
        await self._require_local(addr, "mailbox")
        if await self.store.get_mailbox(addr) is not None:
            raise AlreadyExists(f"mailbox {addr} already exists")
        if any(a.source == addr for a in await self.store.list_aliases()):
            raise Conflict(f"{addr} is an alias; remove the alias first")
        hashed, scram = await self._password_forms(password)
        try:
            await self.store.add_mailbox(addr, hashed, quota, scram)
        except DuplicateError:
            raise AlreadyExists(f"mailbox {addr} already exists") from None
        except NotFoundError as e:
            raise Conflict(f"mailbox {addr}: {e}") from None
        return await self.get_user(addr)

    async def get_user(self, address: str) -> UserInfo:
        addr = normalise_address(address)
        mb = await self.store.get_mailbox(addr)
        if mb is None:
            raise NotFound(f"mailbox {addr} does not exist")
        return UserInfo.from_mailbox(mb)

    async def list_users(self, domain: str | None = None) -> list[UserInfo]:
        dom = normalise_domain(domain) if domain else None
        if dom is not None and dom not in await self.store.list_domains():
            raise NotFound(f"domain {dom} does not exist")
        boxes = await self.store.list_mailboxes(dom)
        return sorted((UserInfo.from_mailbox(mb) for mb in boxes),
                      key=lambda u: (u.address.rpartition("@")[2], u.address))

    async def remove_user(self, address: str) -> str:
        """Delete the mailbox (its delivered mail stays on disk); returns its address."""
        addr = normalise_address(address)
        if not await self.store.remove_mailbox(addr):
            raise NotFound(f"mailbox {addr} does not exist")
        return addr

    async def set_password(self, address: str, password: str | None) -> str:
        """Set (or with None/"" clear, disabling login) the mailbox password."""
        addr = normalise_address(address)
        if await self.store.get_mailbox(addr) is None:
            raise NotFound(f"mailbox {addr} does not exist")
        hashed, scram = await self._password_forms(password)
        if not await self.store.set_password(addr, hashed, scram):
            raise NotFound(f"mailbox {addr} does not exist")
        return addr

    @staticmethod
    async def _password_forms(password: str | None) -> tuple[str, str]:
        """(scrypt hash, SCRAM-SHA-256 verifier) of ``password``; ("", "") for none."""
        if not password:
            return "", ""
        return await asyncio.to_thread(
            lambda: (hash_password(password), derive_scram_verifier(password)))

    # ---- send-as grants (submission)

    @staticmethod
    def _grant_address(address: str) -> str:
        if isinstance(address, str) and address.strip().startswith("*@"):
            return "*@" + normalise_domain(address.strip()[2:])
        return normalise_address(address, mailbox=False)

    async def grant_send_as(self, login: str, address: str) -> str:
        """Let mailbox ``login`` use ``address`` ("user@domain" or "*@domain") as sender."""
        lg = normalise_address(login)
        addr = self._grant_address(address)
        if await self.store.get_mailbox(lg) is None:
            raise NotFound(f"mailbox {lg} does not exist")
        try:
            await self.store.add_send_as(lg, addr)
        except DuplicateError:
            raise AlreadyExists(f"{lg} may already send as {addr}") from None
        except NotFoundError:
            raise NotFound(f"mailbox {lg} does not exist") from None
        return addr

    async def revoke_send_as(self, login: str, address: str) -> str:
        lg = normalise_address(login)
        addr = self._grant_address(address)
        if not await self.store.remove_send_as(lg, addr):
            raise NotFound(f"{lg} has no grant for {addr}")
        return addr

    async def list_send_as(self, login: str) -> list[str]:
        lg = normalise_address(login)
        if await self.store.get_mailbox(lg) is None:
            raise NotFound(f"mailbox {lg} does not exist")
        return await self.store.list_send_as(lg)

    async def set_quota(self, address: str, quota: int) -> str:
        """Change the mailbox quota in bytes (0 = unlimited)."""
        addr = normalise_address(address)
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < 0:
            raise InvalidInput(f"invalid quota {quota!r}: expected bytes >= 0 (0 = unlimited)")
        setter = getattr(self.store, "set_quota", None)
        if setter is None:
            raise AdminError("this store backend cannot change quotas")
        if not await setter(addr, quota):
            raise NotFound(f"mailbox {addr} does not exist")
        return addr

    async def check_password(self, address: str, password: str) -> bool:
        """True if the mailbox exists and ``password`` is its password."""
        try:
            addr = normalise_address(address)
        except InvalidInput:
            return False
        mb = await self.store.get_mailbox(addr)
        if mb is None or not mb.password_hash:
            return False
        return await asyncio.to_thread(verify_password, password, mb.password_hash)

    # ---- aliases

    async def add_alias(self, source: str, targets: Sequence[str]) -> AliasInfo:
        """Add ``source`` ("user@domain" or "@domain" catch-all) → ``targets``."""
        src = _alias_source(source)
        if isinstance(targets, str):
            targets = [targets]
        if not targets:
            raise InvalidInput(f"alias {src}: at least one target is required")
        tgts: list[str] = []
        for t in targets:
            if isinstance(t, str) and t.strip().startswith("@"):
                raise InvalidInput(f"alias {src}: target {t!r} must be an address, "
                                   "not a domain")
            addr = normalise_address(t, mailbox=False)
            if addr not in tgts:
                tgts.append(addr)
        await self._require_local(src, "alias")
        domains = set(await self.store.list_domains())
        mailboxes = {mb.address for mb in await self.store.list_mailboxes(None)}
        aliases = {a.source: a.targets for a in await self.store.list_aliases()}
        if src in aliases:
            raise AlreadyExists(f"alias {src} already exists")
        if src in mailboxes:
            raise Conflict(f"{src} is a mailbox; an address cannot be both a mailbox and "
                           "an alias")
        for t in tgts:
            if t == src:
                raise Conflict(f"alias {src}: it cannot point to itself")
            local, _, dom = t.rpartition("@")
            if dom not in domains:
                continue                        # external: delivered remotely
            base = local.split("+", 1)[0] + "@" + dom
            if not ({t, base} & (mailboxes | set(aliases)) or "@" + dom in aliases):
                raise Conflict(f"alias {src}: target {t} is in local domain {dom} but is "
                               "neither a mailbox nor an alias")
        loop = self._find_loop(src, tgts, aliases)
        if loop:
            raise Conflict(f"alias {src} would create a loop: {' -> '.join(loop)}")
        try:
            await self.store.add_alias(src, tgts)
        except DuplicateError:
            raise AlreadyExists(f"alias {src} already exists") from None
        return AliasInfo(src, tuple(tgts))

    @staticmethod
    def _find_loop(src: str, targets: list[str], aliases: dict[str, tuple[str, ...]]
                   ) -> list[str] | None:
        graph = {**aliases, src: tuple(targets)}
        stack: list[tuple[str, list[str]]] = [(t, [src, t]) for t in targets]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            if node == src:
                return path
            if node in seen:
                continue
            seen.add(node)
            for nxt in graph.get(node, ()):
                stack.append((nxt, path + [nxt]))
        return None

    async def list_aliases(self) -> list[AliasInfo]:
        return sorted((AliasInfo(a.source, tuple(a.targets))
                       for a in await self.store.list_aliases()),
                      key=lambda a: (a.source.rpartition("@")[2], a.source))

    async def remove_alias(self, source: str) -> str:
        src = _alias_source(source)
        if not await self.store.remove_alias(src):
            raise NotFound(f"alias {src} does not exist")
        return src

    # ---- queue

    async def list_queue(self, state: str | RecipientState | None = None,
                         limit: int = 1000) -> list[QueuedMessage]:
        """Queued messages, optionally only those with a recipient in ``state``."""
        st = parse_state(state)
        return await self.store.list_messages(st, limit)

    async def show_queue(self, queue_id: str) -> QueuedMessage:
        msg = await self.store.get_message(queue_id.strip())
        if msg is None:
            raise NotFound(f"message {queue_id} is not in the queue")
        return msg

    async def hold_message(self, queue_id: str) -> int:
        await self.show_queue(queue_id)
        return await self.store.hold(queue_id.strip())

    async def release_message(self, queue_id: str) -> int:
        await self.show_queue(queue_id)
        return await self.store.release(queue_id.strip())

    # ---- DKIM keys (RFC 6376; keys in the store, `mailwright dkim ...`)

    async def dkim_keygen(self, domain: str, selector: str | None = None,
                          algorithm: str = "rsa", bits: int = 2048,
                          activate: bool = True, now: float | None = None) -> DkimKeyInfo:
        """Create a key for a local domain. The new key signs at once unless
        ``activate`` is false (rotation: publish the record first, then ``dkim_activate``).
        The default selector is ``<yyyymm><r|e>``, e.g. "202611r"."""
        from ..mailauth.dkim_keys import generate_key
        name = normalise_domain(domain)
        if name not in await self.store.list_domains():
            raise NotFound(f"domain {name} is not a local domain")
        algo = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}.get(algorithm.lower())
        if algo is None:
            raise InvalidInput(f"algorithm must be rsa or ed25519, got {algorithm!r}")
        now = time.time() if now is None else now
        if selector is None:
            selector = time.strftime("%Y%m", time.gmtime(now)) + algo[0]
        selector = selector.strip().lower()
        if not _SELECTOR.match(selector):
            raise InvalidInput(f"invalid selector {selector!r}: letters, digits, '-' and "
                               "'.' between labels (RFC 6376 §3.1)")
        try:
            pem = await asyncio.to_thread(generate_key, algorithm.lower(), bits)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        key = DkimKey(name, selector, algo, pem.decode("ascii"), now, activate)
        try:
            await self.store.add_dkim_key(key)
        except DuplicateError:
            raise AlreadyExists(f"selector {selector} already exists for {name}") from None
        return DkimKeyInfo.from_key(key)

    async def list_dkim_keys(self, domain: str | None = None) -> list[DkimKeyInfo]:
        keys = await self.store.list_dkim_keys(normalise_domain(domain) if domain else None)
        return [DkimKeyInfo.from_key(k) for k in keys]

    async def dkim_activate(self, domain: str, selector: str) -> str:
        name = normalise_domain(domain)
        if not await self.store.activate_dkim_key(name, selector.strip().lower()):
            raise NotFound(f"no DKIM key {selector} for {name}")
        return name

    async def dkim_remove(self, domain: str, selector: str) -> str:
        name = normalise_domain(domain)
        if not await self.store.remove_dkim_key(name, selector.strip().lower()):
            raise NotFound(f"no DKIM key {selector} for {name}")
        return name

    async def dkim_keys(self, domain: str) -> list[tuple[str, str]]:
        """(selector, TXT value) of every key of ``domain``, for the DNS doctor."""
        return [(k.selector, k.txt) for k in await self.list_dkim_keys(domain)]

    async def delete_message(self, queue_id: str) -> None:
        if not await self.store.delete_message(queue_id.strip()):
            raise NotFound(f"message {queue_id} is not in the queue")

    def queue_ops(self, *, user: str | None = None,
                  wake: Callable[[], bool] | None = None) -> QueueOps:
        """Filtered, audited queue actions (admin/queue_ops.py) on behalf of ``user``
        (default: the OS user); ``wake`` pokes a running server after a change."""
        from .queue_ops import QueueOps
        return QueueOps(self.store, user=user, wake=wake)
