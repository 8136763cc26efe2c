#!/usr/bin/env bash
# Whatever sits at the socket path and is not a socket (regular file, directory,
# symlink to a file, dangling symlink, FIFO) is refused and never touched.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK="$T/ringflyd.sock"

# refuse_case NAME TYPE_TEXT: the daemon must refuse $SOCK naming it and TYPE_TEXT.
refuse_case() {
    local name=$1 type_text=$2
    run_fg "$name" 5 "$RINGFLYD" --socket "$SOCK" --data-dir "$T/data"
    ((RUN_TIMEDOUT == 0)) || fail "$name: daemon was still running after 5 s (it must refuse)"
    assert_eq 1 "$RUN_RC" "$name: exit status"
    ((RUN_MS < 3000)) || fail "$name: daemon took ${RUN_MS} ms to refuse"
    assert_contains "$T/$name.err" "ringflyd: $SOCK: $type_text" "$name: stderr"
    assert_contains "$T/$name.err" "not a socket" "$name: stderr"
    assert_not_contains "$T/$name.err" "removed stale socket" "$name: stderr"
    assert_not_contains "$T/$name.err" "listening path=" "$name: stderr"
    log "$name: refused in ${RUN_MS} ms: $(grep '^ringflyd: ' "$T/$name.err" | head -n 1)"
}

# 1. regular file with content
printf 'precious data\nline 2\n' >"$SOCK"
chmod 0640 "$SOCK"
ino=$(inode_of "$SOCK")
refuse_case regular_file "is a regular file"
[[ -f $SOCK && ! -L $SOCK ]] || fail "regular file: no longer a regular file"
assert_eq "$ino" "$(inode_of "$SOCK")" "regular file: inode"
assert_eq "$(printf 'precious data\nline 2\n')" "$(cat "$SOCK")" "regular file: content"
assert_eq 640 "$(stat -c %a "$SOCK")" "regular file: mode"
# an empty regular file too
: >"$SOCK"
ino=$(inode_of "$SOCK")
refuse_case empty_file "is a regular file"
assert_eq "$ino" "$(inode_of "$SOCK")" "empty file: inode"
assert_eq 0 "$(stat -c %s "$SOCK")" "empty file: size"
rm -f "$SOCK"

# 2. directory with a file inside
mkdir "$SOCK"
echo inside >"$SOCK/keep"
ino=$(inode_of "$SOCK")
refuse_case directory "is a directory"
[[ -d $SOCK && ! -L $SOCK ]] || fail "directory: no longer a directory"
assert_eq "$ino" "$(inode_of "$SOCK")" "directory: inode"
assert_eq inside "$(cat "$SOCK/keep")" "directory: file inside"
assert_eq keep "$(ls -A "$SOCK")" "directory: entries"
rm -rf "$SOCK"

# 3. symlink to an existing file
echo target >"$T/target"
ln -s "$T/target" "$SOCK"
ino=$(inode_of "$SOCK")
refuse_case symlink "is a symbolic link"
[[ -L $SOCK ]] || fail "symlink: no longer a symlink"
assert_eq "$ino" "$(inode_of "$SOCK")" "symlink: inode"
assert_eq "$T/target" "$(readlink "$SOCK")" "symlink: target"
assert_eq target "$(cat "$T/target")" "symlink: target content"
rm -f "$SOCK"

# 4. dangling symlink
ln -s "$T/nowhere/x.sock" "$SOCK"
ino=$(inode_of "$SOCK")
refuse_case dangling_symlink "is a symbolic link"
[[ -L $SOCK ]] || fail "dangling symlink: no longer a symlink"
assert_eq "$ino" "$(inode_of "$SOCK")" "dangling symlink: inode"
assert_eq "$T/nowhere/x.sock" "$(readlink "$SOCK")" "dangling symlink: target"
[[ ! -e $T/nowhere ]] || fail "dangling symlink: the daemon created its target directory"
rm -f "$SOCK"

# 5. symlink to a live socket of somebody else: still a symlink, refused.
if command -v socat >/dev/null 2>&1; then
    start_socat_listener "$T/other.sock"
    ln -s "$T/other.sock" "$SOCK"
    ino=$(inode_of "$SOCK")
    oino=$(inode_of "$T/other.sock")
    refuse_case symlink_to_socket "is a symbolic link"
    [[ -L $SOCK ]] || fail "symlink to socket: no longer a symlink"
    assert_eq "$ino" "$(inode_of "$SOCK")" "symlink to socket: inode"
    assert_eq "$oino" "$(inode_of "$T/other.sock")" "symlink to socket: inode of the target"
    alive "$SOCAT_PID" || fail "symlink to socket: socat died"
    rm -f "$SOCK"
fi

# 6. FIFO
mkfifo -m 0620 "$SOCK"
ino=$(inode_of "$SOCK")
refuse_case fifo "is a FIFO"
[[ -p $SOCK ]] || fail "fifo: no longer a FIFO"
assert_eq "$ino" "$(inode_of "$SOCK")" "fifo: inode"
assert_eq 620 "$(stat -c %a "$SOCK")" "fifo: mode"
rm -f "$SOCK"

pass
