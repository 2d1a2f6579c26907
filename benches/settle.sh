# Sourced by the benchmark scripts: `remove_and_settle PATH...` deletes earlier runs' stores and
# waits until the deletion is no longer what the next run measures.
#
# On ext4 without a journal (this machine's disk), the inode allocator skips every inode deleted
# in the last 60 s whose inode-table block is cached, and in the last 360 s if that block is
# dirty, which the next inode made in it makes it (`find_inode_bit` -> `recently_deleted`).
# Right after a run's 100k+ alias directories are deleted, each mkdir/create spends much of its
# time in that skip (45% of the finisher's samples in one profile; the floor's alias file grew
# from 18 to 163 µs within one run), which measures the last run's cleanup, not this run; etcd,
# which makes no file per key, does not pay it. Dropping the caches is not enough: the blocks
# come back, dirty, with the first new inode in them. So: delete, `sync`, and wait out the
# 360 s (SETTLE_SECONDS=0 to skip the wait, e.g. on a journaled file system).
remove_and_settle() {
  local gone=0 path
  for path in "$@"; do
    if [ -e "$path" ]; then rm -rf "$path"; gone=1; fi
  done
  [ "$gone" = 1 ] || return 0
  sync
  local wait=${SETTLE_SECONDS:-361}
  [ "$wait" -gt 0 ] || return 0
  echo "waiting $wait s: ext4 without a journal skips inodes deleted in the last 360 s (benches/settle.sh)..." >&2
  sleep "$wait"
}
