"""Schemathesis hooks of scripts/fuzz-api: the tar archives of workspace
import and export, which schemathesis cannot make or read by itself.

Import bodies are drawn from real archives (regular files, directories,
symlinks and hard links, names with `..`, absolute names, deep paths, long
names, odd modes), the same archives cut short, and arbitrary bytes: the
daemon must answer each with a declared status, never a 5xx. An export's
body must be a tar archive that Python's tarfile reads to its end.
"""

import io
import tarfile

import schemathesis
from hypothesis import strategies as st

_names = st.lists(
    st.sampled_from(["a", "b", "..", ".", "dir", "x" * 120, "ü", "-n", " "]), min_size=1, max_size=6
).map("/".join)
_entry = st.tuples(
    st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]),
    st.one_of(_names, _names.map(lambda n: "/" + n)),
    st.binary(max_size=2048),
    st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o777]),
    _names,
)


def _archive(entries, fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for kind, name, data, mode, target in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = target if kind in ("symlink", "hardlink") else ""
            tar.addfile(info)
    return buf.getvalue()


_archives = st.builds(
    _archive,
    st.lists(_entry, max_size=8),
    st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
)
_cut_short = st.tuples(_archives, st.integers(min_value=0, max_value=4096)).map(
    lambda t: t[0][: t[1]]
)

# Import takes any content type; the document names both.
for _media_type in ("application/x-tar", "application/octet-stream"):
    schemathesis.openapi.media_type(
        _media_type, st.one_of(_archives, _cut_short, st.binary(max_size=4096))
    )


@schemathesis.deserializer("application/x-tar")
def _read_tar(ctx, response):
    """The export as a string for the schema (`type: string`), once tarfile
    has read every member header of it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:") as tar:
            tar.getmembers()
    except tarfile.TarError as e:
        raise ValueError(f"the export is not a readable tar archive: {e}") from e
    return response.content.decode("latin-1")
