"""SuperNode keys: made on the device, registered on the run's SuperLink by AGATA.

With SuperNode authentication on (the SuperLink has the cloud's certificate), Flower
lets a node join only if its public key was registered. AGATA registers keys for the
devices it selected, so a node that does not match the task cannot join the run:

1. the agent makes a P-384 key pair in the run's work folder on the device (the private
   key never leaves it; a new pair per run);
2. it sends the public key (OpenSSH text) with ``rpc_exec_register_flower_node``,
   authenticated by its device credential; the cloud checks that the task runs, is a
   flower-app and that this device matches its selection criteria, then registers the
   key on the run's SuperLink (``flwr supernode register``) and remembers which device
   it belongs to (the fail-fast reasons name devices, not node ids);
3. the agent starts ``flower-supernode --auth-supernode-private-key``.

What this does not protect: the SuperLink's one port also serves Flower's Control API,
which open-source Flower does not authenticate; anyone who reaches the port can list,
submit and stop runs there. Keep the port reachable by the devices only.
"""

from __future__ import annotations

from pathlib import Path

from agata.errors import invalid
from agata.files import write_private_file

__all__ = ["MAX_KEY_CHARS", "check_public_key", "make_node_key"]

MAX_KEY_CHARS = 2048


def make_node_key(folder: Path) -> tuple[Path, str]:
    """A new P-384 key pair in ``folder``: the private key file (OpenSSH PEM, 0600) and
    the public key as OpenSSH text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = folder / "supernode.key"
    write_private_file(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode()


def check_public_key(text: str) -> str:
    """``text`` if it is one OpenSSH EC public key on a NIST curve (what Flower accepts),
    else INVALID_ARGUMENT saying why."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    text = text.strip()
    if not text or len(text) > MAX_KEY_CHARS or "\n" in text:
        raise invalid(f"public_key must be one OpenSSH public key line (<= {MAX_KEY_CHARS} chars)")
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise invalid(f"public_key is not an OpenSSH public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise invalid("public_key must be an EC key on a NIST curve (P-256, P-384 or P-521)")
    return text
