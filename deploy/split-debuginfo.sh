#!/usr/bin/env bash
# deploy/split-debuginfo.sh BINARY OUTDIR: the release binary at the size a container wants, with its
# debug info split off beside it (the way distributions ship binaries and -dbg packages).
#   OUTDIR/<name>        BINARY without its debug sections. Its symbol table stays, so a backtrace
#                        (RUST_BACKTRACE=1, a panic) still names every function; a .gnu_debuglink
#                        section names the debug file and its checksum.
#   OUTDIR/<name>.debug  the debug sections (line tables of every crate, the C libraries' DWARF),
#                        compressed. Put it next to the binary, or at /usr/lib/debug/<binary's path>.debug
#                        (e.g. /usr/lib/debug/usr/local/bin/formstream.debug), and backtraces show
#                        file:line again; gdb and perf find it the same way.
# Why: the release profile keeps line tables (debug = "line-tables-only"), and they are most of the
# binary (225 MB, of which 167 MB DWARF: see bench/RESULTS.md, "Release binary size"). Plain
# `strip` would make it smaller still, but every backtrace frame would then read <unknown>.
set -euo pipefail

if (($# != 2)); then
  echo "usage: deploy/split-debuginfo.sh BINARY OUTDIR" >&2
  exit 2
fi
binary="$1"
outdir="$2"
name="$(basename "$binary")"
command -v objcopy >/dev/null || { echo "split-debuginfo.sh: objcopy not found (Debian: binutils)" >&2; exit 1; }

mkdir -p "$outdir"
objcopy --only-keep-debug --compress-debug-sections=zlib "$binary" "$outdir/$name.debug"
# The link stores the debug file's name (not its folder) and its CRC.
objcopy --strip-debug --add-gnu-debuglink="$outdir/$name.debug" "$binary" "$outdir/$name"
echo "split-debuginfo.sh: $outdir/$name $(du -h "$outdir/$name" | cut -f1), $outdir/$name.debug $(du -h "$outdir/$name.debug" | cut -f1) (from $(du -h "$binary" | cut -f1))" >&2
