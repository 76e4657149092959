"""The bundle store: names, limits, atomic writes, links and zip uploads."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import unicodedata
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agata.cloud.bundles.bundle_digests import BundleFile
from agata.cloud.bundles.bundle_rules import validate_file_name, validate_task_id
from agata.cloud.bundles.bundle_store import BundleStore
from agata.errors import AgataError, ErrorCode

KIB = 1024
MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(
        tmp_path / "store", max_file_bytes=MIB, max_bundle_bytes=2 * MIB, max_files=5
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raises(code: ErrorCode) -> pytest.RaisesExc[AgataError]:
    return pytest.raises(AgataError, check=lambda e: e.code is code)


def nothing_written(store: BundleStore, task_id: str = "t1") -> bool:
    staging = store.root / ".staging"
    return not store.task_dir(task_id).exists() and not any(staging.iterdir())


def make_zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "server.py",
        "client.py",
        "data_part_1.npz",
        "trigger_example.py",
        "-leading-dash.py",
        "a b.txt",
        "模型.py",
        "données.csv",
        "x" * 255,
        "é" * 127,  # 254 bytes
    ],
)
def test_plain_names_are_accepted(name: str) -> None:
    assert validate_file_name(name) == name


def test_names_are_normalised_to_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "données.csv")

    assert validate_file_name(decomposed) == "données.csv"


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../../../../tmp/x",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "..\\..\\x",
        "\x00",
        "a\x00b",
        "a\nb",
        "\x1b[31mred",
        "x" * 300,
        "x" * 256,
        "é" * 128,  # 256 bytes
        "\u202e",
        "evil\u202eyp.exe",
        "\u200bserver.py",  # zero-width space
        "\ufeffserver.py",  # byte order mark
        "\uff0e\uff0e\uff0fx",  # fullwidth "../x"
        "\uff0e\uff0e",
        "a\uff0fb",
        "a\u2215b",  # division slash
        "a\u2044b",  # fraction slash
        "a\u29f5b",  # reverse solidus operator
        "server\u2024py",  # one dot leader
        "server\uff0epy",
        "\u2025",  # two dot leader
        "\u00bd.txt",  # vulgar fraction one half: NFKC holds a fraction slash
        "a\u00a0b",  # no-break space
        " server.py",
        "server.py ",
        "server.",
        "...",
        "a:b",
        "a*b",
        "what?",
        "a\ufe13b",  # presentation form of ':'
        "\ud800",
        "\ue000",  # private use
        ".hidden",  # hidden names: every agent refuses them (issue 14, item 6)
        ".gitignore",
        ".agata-bundle.json",  # the agent's own manifest
    ],
    ids=ascii,
)
def test_dangerous_names_are_refused(name: str) -> None:
    with raises(ErrorCode.INVALID_ARGUMENT):
        validate_file_name(name)


@given(st.text(min_size=1, max_size=40))
def test_an_accepted_name_is_always_one_plain_component(name: str) -> None:
    try:
        accepted = validate_file_name(name)
    except AgataError as error:
        assert error.code is ErrorCode.INVALID_ARGUMENT
        return
    root = Path("/bundle")
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        normal = unicodedata.normalize(form, accepted)
        assert "/" not in normal and "\\" not in normal and "\0" not in normal
        assert normal not in (".", "..")
        assert (root / normal).parent == root
        assert os.path.basename(normal) == normal


def test_non_string_name_is_refused() -> None:
    with raises(ErrorCode.INVALID_ARGUMENT):
        validate_file_name(b"server.py")  # type: ignore[arg-type]


@pytest.mark.parametrize("task_id", ["t", "task-1", "A_b-9", "x" * 64])
def test_valid_task_ids(task_id: str, store: BundleStore) -> None:
    assert validate_task_id(task_id) == task_id
    assert store.task_dir(task_id) == store.root / f"task_{task_id}"


@pytest.mark.parametrize(
    "task_id", ["", "x" * 65, "a/b", "..", "a b", "abc\n", "é", "a.b", None, 7]
)
def test_invalid_task_ids(task_id: str, store: BundleStore) -> None:
    with raises(ErrorCode.INVALID_ARGUMENT):
        validate_task_id(task_id)
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.task_dir(task_id)
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files(task_id, [("server.py", b"x")])


# --- writing and reading ---------------------------------------------------------


def test_write_then_list_gives_sizes_and_sha256(store: BundleStore) -> None:
    server, client = b"print('server')\n", b"print('client')\n"

    written = store.write_files(
        "t1",
        [("server.py", server), ("client.py", io.BytesIO(client)), ("empty.txt", b"")],
    )

    expected = [
        BundleFile("server.py", len(server), sha(server)),
        BundleFile("client.py", len(client), sha(client)),
        BundleFile("empty.txt", 0, sha(b"")),
    ]
    assert written == expected
    assert store.list_files("t1") == sorted(expected, key=lambda f: f.name)
    assert (store.task_dir("t1") / "server.py").read_bytes() == server
    assert not any((store.root / ".staging").iterdir())


def test_listing_recomputes_the_digest_when_a_file_changes(store: BundleStore) -> None:
    store.write_files("t1", [("a.txt", b"one")])
    path = store.task_dir("t1") / "a.txt"

    path.write_bytes(b"changed by hand")

    assert store.list_files("t1") == [BundleFile("a.txt", 15, sha(b"changed by hand"))]


def test_a_task_without_bundle_is_empty(store: BundleStore) -> None:
    assert store.list_files("none") == []
    assert zipfile.ZipFile(io.BytesIO(store.archive("none"))).namelist() == []
    assert store.delete("none") is False
    with raises(ErrorCode.NOT_FOUND):
        store.open_file("none", "server.py")


def test_open_file_reads_a_bundle_file(store: BundleStore) -> None:
    store.write_files("t1", [("server.py", b"abc")])

    with store.open_file("t1", "server.py") as f:
        assert f.read() == b"abc"
    with raises(ErrorCode.NOT_FOUND):
        store.open_file("t1", "missing.py")
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.open_file("t1", "../t1/server.py")


def test_replace_is_atomic_and_keeps_other_files(store: BundleStore) -> None:
    store.write_files("t1", [("server.py", b"v1"), ("client.py", b"client")])
    path = store.task_dir("t1") / "server.py"
    old_inode = path.stat().st_ino
    reader = store.open_file("t1", "server.py")  # a download in progress

    store.write_files("t1", [("server.py", b"version 2")])

    with reader:
        assert reader.read() == b"v1"  # the old file stays whole for its reader
    assert path.read_bytes() == b"version 2"
    assert path.stat().st_ino != old_inode  # a new file was renamed over the old one
    assert [f.name for f in store.list_files("t1")] == ["client.py", "server.py"]


def test_a_bad_name_anywhere_writes_nothing(store: BundleStore) -> None:
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files("t1", [("server.py", b"ok"), ("../escape.py", b"x")])

    assert nothing_written(store)
    assert not (store.root / "escape.py").exists()


def test_duplicate_names_are_refused(store: BundleStore) -> None:
    decomposed = unicodedata.normalize("NFD", "é.py")

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files("t1", [("é.py", b"1"), (decomposed, b"2")])

    assert nothing_written(store)


def test_bad_content_is_refused(store: BundleStore) -> None:
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files("t1", [("a.txt", "text, not bytes")])  # type: ignore[list-item]
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files("t1", [("a.txt", io.StringIO("text"))])  # type: ignore[list-item]

    assert nothing_written(store)


def test_an_oversized_file_writes_nothing(store: BundleStore) -> None:
    with raises(ErrorCode.TOO_LARGE):
        store.write_files("t1", [("server.py", b"ok"), ("big.bin", b"x" * (MIB + 1))])

    assert nothing_written(store)


def test_an_oversized_stream_is_stopped_while_reading(store: BundleStore) -> None:
    class Endless(io.RawIOBase):
        def __init__(self) -> None:
            self.served = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.served += KIB * 64
            return b"\0" * (KIB * 64)

    endless = Endless()

    with raises(ErrorCode.TOO_LARGE):
        store.write_files("t1", [("server.py", b"ok"), ("stream.bin", endless)])  # type: ignore[list-item]

    assert endless.served <= MIB + KIB * 64
    assert nothing_written(store)


def test_bundle_limits_count_the_files_kept(store: BundleStore) -> None:
    store.write_files("t1", [("a.bin", b"a" * MIB), ("b.bin", b"b" * (MIB - 10))])

    with raises(ErrorCode.TOO_LARGE):  # 2 MiB - 10 + 11 > 2 MiB
        store.write_files("t1", [("c.bin", b"c" * 11)])
    store.write_files("t1", [("a.bin", b"small")])  # replacing frees room
    store.write_files("t1", [("c.bin", b"c" * 11)])
    with raises(ErrorCode.TOO_LARGE):  # 3 files + 3 new > 5
        store.write_files("t1", [("d", b""), ("e", b""), ("f", b"")])

    assert [f.name for f in store.list_files("t1")] == ["a.bin", "b.bin", "c.bin"]


# --- links -------------------------------------------------------------------------


def test_a_symlink_in_the_bundle_is_not_followed(store: BundleStore, tmp_path: Path) -> None:
    store.write_files("t1", [("client.py", b"client")])
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    link = store.task_dir("t1") / "server.py"
    link.symlink_to(outside)

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files("t1", [("server.py", b"evil"), ("other.py", b"x")])
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.open_file("t1", "server.py")

    assert outside.read_bytes() == b"precious"
    assert link.is_symlink()
    assert not (store.task_dir("t1") / "other.py").exists()
    assert [f.name for f in store.list_files("t1")] == ["client.py"]
    assert zipfile.ZipFile(io.BytesIO(store.archive("t1"))).namelist() == ["client.py"]


def test_a_symlinked_task_folder_is_refused(store: BundleStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "server.py").write_bytes(b"precious")
    store.task_dir("t1").symlink_to(outside, target_is_directory=True)

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.write_files("t1", [("server.py", b"evil")])
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.open_file("t1", "server.py")
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.list_files("t1")
    assert (outside / "server.py").read_bytes() == b"precious"

    assert store.delete("t1") is True  # removes the link, not what it points to
    assert not store.task_dir("t1").is_symlink()
    assert (outside / "server.py").read_bytes() == b"precious"


def test_delete_removes_the_bundle_but_not_link_targets(store: BundleStore, tmp_path: Path) -> None:
    store.write_files("t1", [("server.py", b"s")])
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (store.task_dir("t1") / "link").symlink_to(outside)

    assert store.delete("t1") is True

    assert not store.task_dir("t1").exists()
    assert outside.read_bytes() == b"precious"
    assert not any((store.root / ".staging").iterdir())


# --- archives ---------------------------------------------------------------------


def test_archive_round_trip(store: BundleStore) -> None:
    store.write_files("t1", [("server.py", b"s" * 1000), ("client.py", b"c"), ("e", b"")])

    written = store.extract_archive("t2", store.archive("t1"))

    assert sorted(written, key=lambda f: f.name) == store.list_files("t1")
    assert store.list_files("t2") == store.list_files("t1")


@pytest.mark.parametrize(
    "member",
    ["../evil.py", "../../../../tmp/evil.py", "/etc/evil", "sub/server.py", "sub/", "a\\b.py"],
)
def test_zip_with_bad_member_names_writes_nothing(store: BundleStore, member: str) -> None:
    upload = make_zip([("server.py", b"ok"), (member, b"evil")])

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_with_nul_in_member_name_writes_nothing(store: BundleStore) -> None:
    upload = make_zip([("server.py", b"ok"), ("evil.pyX..X..Xx", b"evil")])
    upload = upload.replace(b"evil.pyX..X..Xx", b"evil.py\x00../../x")  # zipfile strips NULs

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_with_symlink_member_writes_nothing(store: BundleStore) -> None:
    link = zipfile.ZipInfo("server.py")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    upload = make_zip([("client.py", b"ok"), (link, b"/etc/passwd")])

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_bomb_is_refused(store: BundleStore) -> None:
    upload = make_zip([("server.py", b"ok"), ("bomb.bin", b"\0" * (64 * MIB))])
    assert len(upload) < 256 * KIB  # a ratio of several hundred

    with raises(ErrorCode.TOO_LARGE):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_bomb_with_lying_sizes_is_refused(store: BundleStore) -> None:
    upload = bytearray(make_zip([("bomb.bin", b"\0" * (8 * MIB))]))
    # Claim 1000 bytes uncompressed in the local header and in the central directory.
    local = upload.index(b"PK\x03\x04")
    struct.pack_into("<I", upload, local + 22, 1000)
    central = upload.index(b"PK\x01\x02")
    struct.pack_into("<I", upload, central + 24, 1000)

    with pytest.raises(AgataError) as info:
        store.extract_archive("t1", bytes(upload))

    assert info.value.code in (ErrorCode.TOO_LARGE, ErrorCode.INVALID_ARGUMENT)
    assert nothing_written(store)


def test_zip_over_the_bundle_limit_is_refused(store: BundleStore) -> None:
    upload = make_zip([(f"part{i}.bin", os.urandom(MIB - 1)) for i in range(3)])

    with raises(ErrorCode.TOO_LARGE):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_with_too_many_members_is_refused(store: BundleStore) -> None:
    upload = make_zip([(f"f{i}.txt", b"x") for i in range(6)])

    with raises(ErrorCode.TOO_LARGE):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_with_duplicate_members_is_refused(store: BundleStore) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        upload = make_zip([("server.py", b"1"), ("server.py", b"2")])

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_encrypted_member_is_refused(store: BundleStore) -> None:
    upload = bytearray(make_zip([("server.py", b"ok")]))
    central = upload.index(b"PK\x01\x02")
    flags = struct.unpack_from("<H", upload, central + 8)[0]
    struct.pack_into("<H", upload, central + 8, flags | 0x1)

    with raises(ErrorCode.INVALID_ARGUMENT):
        store.extract_archive("t1", bytes(upload))

    assert nothing_written(store)


def test_an_oversized_archive_is_refused_before_reading(store: BundleStore) -> None:
    with raises(ErrorCode.TOO_LARGE):
        store.extract_archive("t1", b"\0" * (3 * MIB))

    assert nothing_written(store)


@pytest.mark.parametrize("upload", [b"", b"not a zip", b"PK\x03\x04garbage"])
def test_not_a_zip_is_refused(store: BundleStore, upload: bytes) -> None:
    with raises(ErrorCode.INVALID_ARGUMENT):
        store.extract_archive("t1", upload)

    assert nothing_written(store)


def test_zip_keeps_files_not_in_the_archive(store: BundleStore) -> None:
    store.write_files("t1", [("data.npz", b"data"), ("server.py", b"old")])

    store.extract_archive("t1", make_zip([("server.py", b"new"), ("client.py", b"c")]))

    files = {f.name: f for f in store.list_files("t1")}
    assert sorted(files) == ["client.py", "data.npz", "server.py"]
    assert files["server.py"].sha256 == sha(b"new")
