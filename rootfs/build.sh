#!/usr/bin/env bash
# Builds the sandboxes' read-only root from the host's Node: usage: rootfs/build.sh OUT_DIR
#
# OUT_DIR gets usr/bin/node (from $NODE, default /usr/bin/node), exactly the shared libraries the
# loader maps for it (and the loader itself) at their host paths, the runtime's JavaScript in
# taskcell/, a minimal etc/ and empty proc/, dev/, tmp/ mount points. No shell, nothing else.
# The tree is built from scratch next to OUT_DIR and swapped in with rename, so a rebuild is
# idempotent and a failed one leaves the previous root in place. See rootfs/README.md.
set -euo pipefail
umask 022

die() { echo "rootfs/build.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runtime_js=$here/../runtime/js
node=$(readlink -f "${NODE:-/usr/bin/node}") || die "no Node at ${NODE:-/usr/bin/node}"
if [ ! -f "$node" ] || [ ! -x "$node" ]; then die "$node is not an executable file"; fi
[ -d "$runtime_js" ] || die "no runtime JavaScript at $runtime_js"

name=$(basename "$1")
case $name in
    / | . | ..) die "refusing to replace $1: name the root's own directory" ;;
esac
mkdir -p "$(dirname "$1")"
parent=$(cd "$(dirname "$1")" && pwd)
out=${parent%/}/$name

# The swap deletes what was at OUT_DIR: accept only a directory that looks like one of our roots
# (or an empty one), never, say, /usr given by mistake.
if [ -e "$out" ] || [ -L "$out" ]; then
    if [ ! -d "$out" ] || [ -L "$out" ]; then die "$out exists and is not a directory"; fi
    for entry in "$out"/* "$out"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        case ${entry##*/} in
            usr | lib | lib32 | lib64 | libx32 | etc | proc | dev | tmp | taskcell) ;;
            *) die "$out has ${entry##*/}, which no taskcell root has: not replacing it" ;;
        esac
    done
fi

# Never built from a path a tenant (or anyone but its owner) can write.
check_source() {
    local writable
    writable=$(find "$1" -perm -0002 ! -type l -print -quit)
    [ -z "$writable" ] || die "$writable is world-writable: not building a root from it"
}

# Reads an unsigned little-endian integer of $3 bytes at offset $2 of file $1.
read_uint() { od -An -j "$2" -N "$3" -t "u$3" "$1" | tr -d ' \n'; }

# Prints the ELF interpreter (PT_INTERP) of $1, or nothing for a static executable.
elf_interpreter() {
    local file=$1 phoff phentsize phnum i entry offset size
    [ "$(od -An -N4 -tx1 "$file" | tr -d ' \n')" = 7f454c46 ] || die "$file is not an ELF file"
    [ "$(read_uint "$file" 4 1)" = 2 ] || die "$file is not a 64-bit ELF file"
    [ "$(read_uint "$file" 5 1)" = 1 ] || die "$file is not a little-endian ELF file"
    phoff=$(read_uint "$file" 32 8)
    phentsize=$(read_uint "$file" 54 2)
    phnum=$(read_uint "$file" 56 2)
    for ((i = 0; i < phnum; i++)); do
        entry=$((phoff + i * phentsize))
        if [ "$(read_uint "$file" "$entry" 4)" = 3 ]; then # PT_INTERP
            offset=$(read_uint "$file" $((entry + 8)) 8)
            size=$(read_uint "$file" $((entry + 32)) 8)
            dd if="$file" bs=1 skip="$offset" count=$((size - 1)) 2>/dev/null # without its NUL
            return
        fi
    done
}

# Copies host path $1 to the same path under $root: every symlink met on the way (a merged-/usr
# /lib -> usr/lib, a library's soname link) is recreated as it is and followed, so that real files
# get copied and the same names resolve the same way inside the sandbox.
add_path() {
    local path=$1 depth=${2:-0} prefix='' rest component target
    ((depth < 40)) || die "too many symlinks resolving $1"
    rest=${path#/}
    while [ -n "$rest" ]; do
        component=${rest%%/*}
        if [ "$component" = "$rest" ]; then rest=; else rest=${rest#*/}; fi
        case $component in
            '' | .) continue ;;
            ..) prefix=${prefix%/*}; continue ;;
        esac
        local current=$prefix/$component
        if [ -L "$current" ]; then
            target=$(readlink "$current")
            if [ ! -L "$root$current" ]; then
                mkdir -p "$root$prefix"
                ln -s "$target" "$root$current"
            fi
            case $target in
                /*) add_path "$target${rest:+/$rest}" $((depth + 1)) ;;
                *) add_path "$prefix/$target${rest:+/$rest}" $((depth + 1)) ;;
            esac
            return
        elif [ -z "$rest" ]; then
            [ -f "$current" ] || die "$current is not a regular file"
            check_source "$current"
            mkdir -p "$root$prefix"
            [ -e "$root$current" ] || cp "$current" "$root$current"
        else
            [ -d "$current" ] || die "$current is not a directory"
            mkdir -p "$root$current"
        fi
        prefix=$current
    done
}

root=$(mktemp -d "$out.new.XXXXXX")
old=
cleanup() {
    for dir in "$root" "$old"; do
        if [ -n "$dir" ] && [ -d "$dir" ]; then
            chmod -R u+w "$dir" && rm -rf "$dir"
        fi
    done
}
trap cleanup EXIT

# Node itself, always as a regular file at /usr/bin/node (the host's may be a symlink chain
# through /etc/alternatives, which the root does not have).
check_source "$node"
mkdir -p "$root/usr/bin"
cp "$node" "$root/usr/bin/node"

# The loader named in the binary, then what it maps: its own --list mode (what ldd runs) reports
# exactly the libraries of the dependency closure, resolved by the loader's real search
# (RUNPATH, ld.so.cache, system directories, glibc-hwcaps). The environment is emptied so that
# LD_LIBRARY_PATH or LD_PRELOAD cannot add to the set.
interpreter=$(elf_interpreter "$node")
libraries=()
if [ -n "$interpreter" ]; then
    add_path "$interpreter"
    listing=$(env -i "$interpreter" --list "$node") || die "$interpreter --list $node failed"
    while read -r line; do
        case $line in
            *'=> not found'*) die "$node needs a library the host lacks: $line" ;;
            *' => /'*) library=${line#* => }; libraries+=("${library% (0x*}") ;;
            /*) ;; # the loader itself, under the name the binary uses
            *) ;;  # the vDSO (linux-vdso.so.1): in the kernel, not a file
        esac
    done <<<"$listing"
fi
for library in "${libraries[@]}"; do
    add_path "$library"
done

# Distribution builds of Node (Debian's and Ubuntu's nodejs) keep some of their own JavaScript outside the
# binary (acorn, cjs-module-lexer, undici as "externalized builtins" under /usr/share/nodejs) and read it at
# every start: copy each such file that Node or its libraries name.
while read -r builtin; do
    if [ -f "$builtin" ]; then add_path "$builtin"; fi
done < <(grep -aohE '/usr/share/nodejs/[A-Za-z0-9_./@+-]+\.js' "$node" "${libraries[@]}" | sort -u)

# Libraries the sandbox's loader must find without the host's ld.so.cache, which the root does
# not carry: warn about any outside the loader's system search path.
if [ -n "$interpreter" ]; then
    system_dirs=$(env -i "$interpreter" --help 2>/dev/null | sed -n 's/^ *\(\/[^ ]*\) (system search path)$/\1/p')
    for library in "${libraries[@]}"; do
        dir=${library%/*}
        dir=${dir%/glibc-hwcaps/*}
        if [ -n "$system_dirs" ] && ! grep -qxF "$dir" <<<"$system_dirs"; then
            echo "rootfs/build.sh: warning: $library is outside the loader's system search path;" \
                "the sandbox finds it only through RUNPATH or LD_LIBRARY_PATH" >&2
        fi
    done
fi

# The runtime's JavaScript (bootstrap.js and friends), with symlinks resolved to real files.
check_source "$runtime_js"
cp -RL "$runtime_js" "$root/taskcell"

# Name service: who uid/gid 1000 is, and localhost, from files only (no DNS in the sandbox).
mkdir -p "$root/etc"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/nonexistent:/nonexistent
sandbox:x:1000:1000:taskcell sandbox:/tmp:/nonexistent
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
sandbox:x:1000:
EOF
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files
EOF

# Mount points the jailer fills (taskcell/modules: the operator's npm modules, `serve --modules DIR`).
mkdir -p "$root/proc" "$root/dev" "$root/tmp" "$root/taskcell/modules"

# Read-only for everyone: executables (node, the loader, libraries marked so) 0555, other files
# 0444, directories 0555. Symlinks have no mode of their own.
find "$root" -type f -perm /0111 -exec chmod 0555 {} +
find "$root" -type f ! -perm /0111 -exec chmod 0444 {} +
find "$root" -type d -exec chmod 0555 {} +

# Swap in: two renames within OUT_DIR's parent (so that no read-only directory has to change its
# "..", which needs no privilege). OUT_DIR is missing only between them.
if [ -e "$out" ]; then
    old=$(mktemp -d "$out.old.XXXXXX")
    mv -T "$out" "$old"
fi
mv -T "$root" "$out"
root=

files=$(find "$out" -type f | wc -l)
links=$(find "$out" -type l | wc -l)
size=$(du -sb "$out" | cut -f1)
echo "rootfs: $out: $files files, $links symlinks, ${#libraries[@]} libraries, $((size / 1048576)) MiB"
