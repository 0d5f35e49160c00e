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

# $1 the folder, then file names in it (hex digests and writer ids only): their sha256.
SUMS_IN = 'cd "$1" && shift && sha256sum -- "$@"'

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
