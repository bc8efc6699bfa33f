"""The operator's Python API: write a policy, validate it, sign it, merge the parties'
signatures, start a local enclave or attest a running one.

The same steps as ``cctrain policy init | add-party | check | sign | merge`` and
``cctrain enclave serve``, for scripts and notebooks::

    from cctrain import operator as op

    b = op.PolicyBuilder("hospitals", name="study-42")
    b.add_party("hospital-a", ["data_provider"], op.public_keys("hospital-a.pub.json"))
    b.add_party("research-lab", ["recipient"], op.public_keys("research-lab.pub.json"))
    b.set("training.epochs", 5)
    policy = b.write("policy.toml")            # validated: PolicyError lists every problem
    signed = op.merge([op.sign(policy, PartyKeys.load("hospital-a.key")), ...]).signed
    with op.local_enclave("policy.signed.json", state_dir="state", log="enclave.log") as e:
        with op.connect(e.address, policy="policy.signed.json", key="hospital-a.key",
                        allow_simulated=True) as session:
            print(session.status().phase)

Nothing here is trusted code: the enclave enforces the signed policy whatever this API does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cctrain.authoring import MergeResult, PublicKeys, add_party, merge_signed, policy_template
from cctrain.client import EnclaveSession
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import InputError, PolicyFileError
from cctrain.local import LocalEnclave, LocalWorker
from cctrain.policy import Policy, SignedPolicy, parse_policy

__all__ = [
    "MergeResult",
    "PolicyBuilder",
    "PublicKeys",
    "connect",
    "local_enclave",
    "local_worker",
    "merge",
    "public_keys",
    "sign",
]


def public_keys(source: str | Path | PartyKeys) -> PublicKeys:
    """A party's public keys: from the ``PARTY.pub.json`` ``cctrain keygen`` wrote, or from
    its :class:`PartyKeys`."""
    if isinstance(source, PartyKeys):
        return PublicKeys(source.party_id, source.signing_public, source.hpke_public)
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return PublicKeys.from_json(raw, where=str(path))


class PolicyBuilder:
    """A policy under construction: a scenario's commented TOML template, edited in place."""

    def __init__(
        self, scenario: str = "hospitals", *, dp: bool = False, ranks: int = 1, name: str = ""
    ) -> None:
        self._text = policy_template(scenario, dp=dp, ranks=ranks, name=name or "my-consortium")

    @classmethod
    def from_toml(cls, text: str) -> PolicyBuilder:
        """A builder that starts from an existing policy's TOML text (nothing is checked
        until :meth:`validate` or :meth:`write`)."""
        builder = cls.__new__(cls)
        builder._text = text
        return builder

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyBuilder:
        """A builder that starts from the policy TOML in ``path``."""
        try:
            return cls.from_toml(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None

    def add_party(
        self, party_id: str, roles: Iterable[str] | str, keys: PublicKeys | PartyKeys
    ) -> PolicyBuilder:
        """Add a party (see :func:`cctrain.authoring.add_party`); returns ``self``."""
        pub = keys if isinstance(keys, PublicKeys) else public_keys(keys)
        self._text, _ = add_party(self._text, party_id, roles, pub)
        return self

    def set(self, key: str, value: Any) -> PolicyBuilder:
        """Set a dotted key (``training.epochs``, ``privacy.target_epsilon``); tables on the
        way are created. Comments elsewhere are kept. Returns ``self``."""
        import tomlkit

        doc = tomlkit.parse(self._text)
        *tables, leaf = key.split(".")
        node: Any = doc
        for t in tables:
            if t not in node:
                node[t] = tomlkit.table()
            node = node[t]
            if not hasattr(node, "__setitem__"):
                raise InputError(f"{key}: {t!r} is not a table")
        node[leaf] = value
        self._text = tomlkit.dumps(doc)
        return self

    def toml(self) -> str:
        """The policy's TOML text, as the parties will sign it."""
        return self._text

    def validate(self) -> Policy:
        """The parsed policy; :class:`~cctrain.errors.PolicyError` lists every problem."""
        return parse_policy(self._text.encode(), "toml")

    def write(self, path: str | Path) -> Policy:
        """Validate, then write the TOML to ``path``; the policy as written."""
        policy = self.validate()
        Path(path).write_bytes(policy.raw)
        return policy


def sign(policy: Policy | SignedPolicy | str | Path, keys: PartyKeys) -> SignedPolicy:
    """``policy`` (a policy, a signed one, or its file: ``.toml``/``.json`` policy or a signed
    envelope) with ``keys``' signature added. Refuses a key the policy does not list."""
    if isinstance(policy, (str, Path)):
        path = Path(policy)
        if path.name.endswith(".signed.json"):
            policy = SignedPolicy.load(path)
        else:
            from cctrain.policy import load_policy_file

            policy = load_policy_file(path)
    signed = policy if isinstance(policy, SignedPolicy) else SignedPolicy.new(policy)
    party = signed.policy.party(keys.party_id)
    if party is None or party.signing_key != keys.signing_public:
        raise InputError(
            f"key: {keys.party_id!r} with this signing key is not a party of the policy"
        )
    return SignedPolicy(signed.envelope.sign(keys.party_id, keys.signing_key), signed.policy)


def merge(signed: Sequence[SignedPolicy | str | Path]) -> MergeResult:
    """Every signature of ``signed`` (envelopes or their files) over the same policy."""
    loaded = [s if isinstance(s, SignedPolicy) else SignedPolicy.load(s) for s in signed]
    names = [str(s) if not isinstance(s, SignedPolicy) else f"#{i}" for i, s in enumerate(signed)]
    return merge_signed(loaded, names=names)


def local_enclave(
    policy: str | Path,
    *,
    state_dir: str | Path,
    log: str | Path,
    platform: str = "simulated",
    extra_args: Sequence[str] = (),
) -> LocalEnclave:
    """An enclave as a local child process (``with ... as e: e.address``), serving the
    signed policy in ``policy``. Needs the trainer (``cctrain[enclave]``)."""
    path = Path(policy)
    if not path.is_file():
        raise PolicyFileError(f"{path}: no such signed policy")
    return LocalEnclave(
        policy=path,
        state_dir=Path(state_dir),
        log=Path(log),
        platform=platform,
        extra_args=extra_args,
    )


def local_worker(
    policy: str | Path,
    *,
    rank: int,
    rendezvous: str,
    state_dir: str | Path,
    log: str | Path,
    platform: str = "simulated",
) -> LocalWorker:
    """Rank ``rank`` (≥ 1) of a cluster as a local child process (``with ... as w``), joining
    rank 0's ``rendezvous`` (``local_enclave(..., extra_args=("--cluster-listen",
    "127.0.0.1:0")).cluster_rendezvous``); ``w.wait()`` once the run ended."""
    path = Path(policy)
    if not path.is_file():
        raise PolicyFileError(f"{path}: no such signed policy")
    if rank < 1:
        raise InputError(f"rank: got {rank}, want ≥ 1 (rank 0 is the enclave itself)")
    return LocalWorker(
        policy=path,
        rank=rank,
        rendezvous=rendezvous,
        state_dir=Path(state_dir),
        log=Path(log),
        platform=platform,
    )


def connect(
    address: str,
    *,
    policy: SignedPolicy | str | Path,
    key: PartyKeys | str | Path,
    allow_simulated: bool = False,
    state_dir: str | Path | None = None,
) -> EnclaveSession:
    """An attested session with the enclave at ``address`` (``host:port``), as the party
    whose ``key`` it is: ``session.status()``, ``session.watch()``... ``state_dir``: what this
    party remembers (default ``$CCTRAIN_HOME``, see :class:`~cctrain.client.EnclaveSession`)."""
    return EnclaveSession(
        address, policy=policy, key=key, allow_simulated=allow_simulated, state_dir=state_dir
    )
