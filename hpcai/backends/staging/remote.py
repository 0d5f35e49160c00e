"""The shell that staging runs on the cluster. Every script is a constant (or built from names hpcai made
itself: hex digests, writer ids) and gets the paths it needs as positional arguments, so no path, however
odd, is ever parsed by a shell. The one script that carries the user's file names (materialise) quotes
each with shlex, byte-exact.

The store, under `<filesystem>/hpcai/store/` (folders 0700, or 0750 where the profile shares it with the
project group):
- `objects/ab/<sha256>`: each distinct content once, read-only (0444); `<sha256>.<mode>` is a copy with
  another mode (0555 scripts, 0400 private files), made once, so no tree's modes change another's;
- `objects/tmp/<sha256>.<writer>.part`: uploads in progress, one per writer (a later stage takes a part
  over by rename and appends: same content at the same offsets, so even two live writers agree);
- `trees/<tree id>/`: a staged folder of hard links to the objects, built under
  `<tree id>.building-<writer>` and renamed into place whole: a tree that exists is complete.
"""

from __future__ import annotations

# The record find prints for each staged file or link; manifest.listing_row builds the same bytes here.
TREE_LISTING = (
    "find . -mindepth 1 \\( -type f -printf 'f %m %s %P\\0' \\) -o \\( -type l -printf 'l %P %l\\0' \\) "
    "-o \\( -type d \\) -o -printf '? %P\\0' | LC_ALL=C sort -z | sha256sum"
)

# $1 store root, $2 tree path, $3 umask, $4 mode of the store's folders.
PROBE = f"""
umask "$3"
root=$1 tree=$2
mkdir -p "$root/objects/tmp" "$root/trees" || exit 3
chmod "$4" "$root" "$root/objects" "$root/objects/tmp" "$root/trees" 2>/dev/null
cd "$root" || exit 3
find trees -mindepth 1 -maxdepth 1 -name '*.building-*' -mmin +1440 -exec rm -rf {{}} + 2>/dev/null
find objects/tmp -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {{}} + 2>/dev/null
if [ -d "$tree" ]; then
  d=$(cd "$tree" && {TREE_LISTING})
  echo "tree ${{d%% *}}"
else
  echo "tree none"
fi
find objects -mindepth 2 -maxdepth 2 -type f -printf 'obj %P %s\\n'
command -v python3 >/dev/null 2>&1 && echo "python3 yes"
df -Pk . | tail -n 1 | awk '{{print "free " $4}}'
"""

# stdin: a tar stream of `ab/<sha256>` members. $1 store root, $2 writer id, $3 umask. Extracts into the
# writer's own folder, checks every file's sha256 against its name, installs the good ones.
TAR_INSTALL = r"""
umask "$3"
root=$1 w=$2
cd "$root/objects/tmp" || exit 3
rm -rf "$w.tar" && mkdir "$w.tar" && cd "$w.tar" || exit 3
tar -x -f - --no-same-owner --no-same-permissions; rc=$?  # on failure, what arrived whole is still kept
find . -type f -exec sha256sum {} + > "../$w.sums" || exit 5
awk '{n=$2; sub(/.*\//,"",n); print ($1==n ? "ok " : "bad ") n; if ($1!=n) print $2 > "../'"$w"'.bad"}' "../$w.sums"
[ -f "../$w.bad" ] && xargs rm -f -- < "../$w.bad"
for p in *; do
  [ -d "$p" ] || continue
  set -- "$p"/*
  [ -e "$1" ] || continue
  mkdir -p "$root/objects/$p" && chmod 444 "$@" && mv -f -- "$@" "$root/objects/$p/" || exit 6
done
cd .. && rm -rf "$w.tar" "$w.sums" "$w.bad"
exit $rc
"""

# Materialise with one process instead of a process per file (2,000 links: 1.4 s by `ln` through a shell,
# a few ms here), where the login node has python3 (every site hpcai knows). argv: store root, building,
# target, umask (octal), repair (0/1); stdin: NUL-separated records, `I part object` (a checked upload to
# install first), `F place variant base mode` or `L place link-target`, paths as raw bytes.
MATERIALISE_PY = r"""
import os, shutil, sys
root, building, target = (os.fsencode(a) for a in sys.argv[1:4])
os.umask(int(sys.argv[4], 8))
repair = sys.argv[5] == "1"
objects = os.path.join(root, b"objects")
fields = sys.stdin.buffer.read().split(b"\0")
os.mkdir(building)
made = set()
i = 0
while i < len(fields) - 1:
    kind = fields[i]
    if kind not in (b"I", b"F", b"L"):  # an empty record: an empty folder sends one separator and nothing else
        i += 1
        continue
    if kind == b"I":  # a part checked on its way here becomes its object, read-only
        part, obj = os.path.join(objects, b"tmp", fields[i + 1]), os.path.join(objects, fields[i + 2])
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        os.chmod(part, 0o444)
        os.replace(part, obj)
        i += 3
        continue
    if kind == b"F":
        place, variant, base, mode = fields[i + 1 : i + 5]
        i += 5
    else:
        place, link = fields[i + 1 : i + 3]
        i += 3
    dest = os.path.join(building, place)
    parent = os.path.dirname(dest)
    if parent not in made:
        os.makedirs(parent, exist_ok=True)
        made.add(parent)
    if kind == b"L":
        os.symlink(link, dest)
        continue
    mode = int(mode, 8)
    obj = os.path.join(objects, variant)
    if variant != base and not os.path.isfile(obj):  # a copy with its own mode, made once for the store
        tmp = obj + b".%d" % os.getpid()
        shutil.copyfile(os.path.join(objects, base), tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, obj)
    try:
        os.link(obj, dest)  # hard links share the object's bytes
    except OSError:  # a filesystem without them gets a copy
        shutil.copyfile(obj, dest)
        os.chmod(dest, mode)
try:
    os.rename(building, target)  # first writer wins
except OSError:
    if not repair:
        shutil.rmtree(building)  # a later one drops its identical copy
    else:  # a damaged tree is replaced whole: readers see the old one or the new one
        old = target + b".old.%d" % os.getpid()
        os.rename(target, old)
        os.rename(building, target)
        shutil.rmtree(old)
"""

# The same as TAR_INSTALL in one process where python3 exists: each member is hashed as it is written,
# installed by rename when its sha256 is its name (no second read, no process per prefix folder).
# argv: store root, writer id, umask (octal). Prints `ok <sha>` / `bad <sha>`.
TAR_INSTALL_PY = r"""
import hashlib, os, sys, tarfile
root, writer = sys.argv[1], sys.argv[2]
os.umask(int(sys.argv[3], 8))
objects = os.path.join(root, "objects")
tmp = os.path.join(objects, "tmp", writer + ".tar")
os.makedirs(tmp, exist_ok=True)
made = set()
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for member in tar:
        name = os.path.basename(member.name)
        if not member.isfile() or len(name) != 64:
            continue
        source = tar.extractfile(member)
        digest = hashlib.sha256()
        part = os.path.join(tmp, name)
        with open(part, "wb") as out:
            while True:
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != name:
            os.unlink(part)
            print("bad", name, flush=True)
            continue
        os.chmod(part, 0o444)
        folder = os.path.join(objects, name[:2])
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        os.replace(part, os.path.join(folder, name))
        print("ok", name)
os.rmdir(tmp)
"""

# $1 the folder, then file names in it (hex digests and writer ids only): their sha256.
SUMS_IN = 'cd "$1" && shift && sha256sum -- "$@"'

# The same with the cluster's python3 (argv: folder, names): hashlib uses the CPU's SHA extensions where
# coreutils' sha256sum often does not -- 1.2 GB/s against 0.2 GB/s on this machine, seconds per GB saved
# on every large file checked. Output as sha256sum's; a name that cannot be read is left out (as missing).
SUMS_IN_PY = """
import hashlib, os, sys
os.chdir(sys.argv[1])
for name in sys.argv[2:]:
    digest = hashlib.sha256()
    try:
        with open(name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        sys.stderr.write("%s: %s\\n" % (name, exc))
        continue
    sys.stdout.write("%s  %s\\n" % (digest.hexdigest(), name))
"""

# stdin: a file's bytes from offset $2 on. $1 the part, $2 the offset (bytes already in the part), $3 umask.
# Appends to the part while hashing the part's first $2 bytes and then the stream: the cluster's sha256
# of the whole part is ready when the last byte lands (no second pass over it). A refused write (full disk,
# quota) keeps what was written, drains the rest of the stream so the sender finishes, and exits 5.
STREAM_PART_PY = r"""
import hashlib, os, sys
part, offset = sys.argv[1], int(sys.argv[2])
os.umask(int(sys.argv[3], 8))
digest, size, error = hashlib.sha256(), 0, None
try:
    os.makedirs(os.path.dirname(part), exist_ok=True)
    out = open(part, "r+b" if offset else "wb")
except OSError as exc:
    sys.stderr.write("%s\n" % exc)
    sys.exit(3)
while size < offset:
    chunk = out.read(min(1 << 20, offset - size))
    if not chunk:
        sys.stderr.write("the part is shorter than %d bytes\n" % offset)
        sys.exit(4)
    digest.update(chunk)
    size += len(chunk)
out.seek(offset)
out.truncate()
stream = sys.stdin.buffer
read = getattr(stream, "read1", stream.read)
while True:
    chunk = read(1 << 20)
    if not chunk:
        break
    if error is None:  # after a refused write the rest is drained, so the sender finishes
        try:
            out.write(chunk)
        except OSError as exc:
            error = exc
            continue
        digest.update(chunk)
        size += len(chunk)
try:
    out.close()
except OSError as exc:
    error = error or exc
if error is not None:
    sys.stderr.write("%s\n" % error)
    sys.exit(5)
sys.stdout.write("%s %d\n" % (digest.hexdigest(), size))
"""

# $1 a tree: one digest over the sha256 of every file (names unescaped, `sha256sum -z`).
TREE_CONTENT = 'cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum -z | sha256sum'

# $1 store root; stdin: the script below, built per stage.
RUN_STDIN = ["sh", "-s", "--"]


def materialise_script(
    *,
    umask: str,
    building: str,
    target: str,
    folders: list[bytes],
    files: list[tuple[bytes, str, str, int]],
    links: list[tuple[bytes, bytes]],
    repair: bool,
) -> bytes:
    """Link objects into `building`, then rename it to `target` in one step. `files` holds (quoted place,
    variant path relative to objects/, base object path, mode); `links` (quoted place, quoted target)."""
    import shlex

    def q(path: str) -> bytes:
        return shlex.quote(path).encode()

    lines = [b"set -eu", f"umask {umask}".encode(), b'o="$1/objects"', b"B=" + q(building), b"T=" + q(target),
             b'mkdir "$B"']  # fmt: skip
    lines += [b'mkdir -p "$B"/' + folder for folder in folders]
    made: set[str] = set()
    for place, variant, base, mode in files:
        if variant != base and variant not in made:  # a copy with its own mode, made once for the store
            made.add(variant)
            v = f'"$o"/{shlex.quote(variant)}'
            lines.append(f'[ -f {v} ] || {{ cp "$o"/{shlex.quote(base)} {v}.$$ && chmod {mode:o} {v}.$$ && '
                         f'mv -f {v}.$$ {v}; }}'.encode())  # fmt: skip
        obj = f'"$o"/{shlex.quote(variant)}'.encode()
        # Hard links share the object's bytes; a filesystem without them gets a copy.
        lines.append(b"ln -f " + obj + b' "$B"/' + place + b" 2>/dev/null || { cp " + obj + b' "$B"/' + place
                     + f" && chmod {mode:o} ".encode() + b'"$B"/' + place + b"; }")  # fmt: skip
    lines += [b"ln -s -- " + link + b' "$B"/' + place for place, link in links]
    if repair:  # a damaged tree is replaced whole: readers see the old one or the new one
        lines.append(b'if ! mv -T "$B" "$T" 2>/dev/null; then mv -T "$T" "$T.old.$$" && mv -T "$B" "$T" && '
                     b'rm -rf "$T.old.$$"; fi')  # fmt: skip
    else:  # first writer wins; a later one drops its identical copy
        lines.append(b'mv -T "$B" "$T" 2>/dev/null || rm -rf "$B"')
    lines.append(b'[ -d "$T" ]')
    return b"\n".join(lines) + b"\n"
