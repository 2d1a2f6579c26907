//! Creates that cost less (issue 23, third pass). A create reaches the
//! alias's namespace directory (`manifests/<host>/<namespace>`) with one
//! `openat2` that follows no symlink, instead of opening `manifests/`, the
//! host and the namespace one after another. These tests count, with an
//! inotify watch that asks for opens, how often the directories above the
//! namespace are opened while aliases are created, and check that a path
//! through a symlink is still never written through.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::support::Server;

/// An inotify instance reporting opens of the directories it watches.
struct Opens {
    fd: i32,
    /// Each watch descriptor with its directory's label.
    watches: Vec<(i32, &'static str)>,
}

impl Opens {
    fn new() -> Opens {
        // SAFETY: a plain system call; the descriptor is closed in `drop`.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        Opens {
            fd,
            watches: Vec::new(),
        }
    }

    fn watch(&mut self, dir: &Path, label: &'static str) {
        let path = CString::new(dir.as_os_str().as_bytes()).expect("path");
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd, path.as_ptr(), libc::IN_OPEN) };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        self.watches.push((wd, label));
    }

    /// How many times each watched directory itself was opened since the
    /// last call (opens of the entries in it, reported with their name, are
    /// not counted).
    fn take(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> =
            self.watches.iter().map(|(_, label)| (*label, 0)).collect();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // EAGAIN: nothing more queued.
            }
            let mut at = 0;
            while at < n as usize {
                let word = |i: usize| {
                    u32::from_ne_bytes(buf[at + i * 4..at + i * 4 + 4].try_into().unwrap())
                };
                let (wd, mask, len) = (word(0) as i32, word(1), word(3) as usize);
                assert_eq!(mask & libc::IN_Q_OVERFLOW, 0, "inotify queue overflowed");
                if mask & libc::IN_OPEN != 0 && len == 0 {
                    if let Some(i) = self.watches.iter().position(|(w, _)| *w == wd) {
                        counts[i].1 += 1;
                    }
                }
                at += 16 + len;
            }
        }
        counts
    }
}

impl Drop for Opens {
    fn drop(&mut self) {
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn issue23_creates_open_neither_manifests_nor_the_host_directory() {
    let server = Server::with_models(&["qwen"]);
    let manifests = server.store.root().join("manifests");
    let host = manifests.join("registry.ollama.ai");
    let mut opens = Opens::new();
    opens.watch(&manifests, "manifests/");
    opens.watch(&host, "manifests/registry.ollama.ai/");
    // Whatever start-up or the watch opened before the creates.
    let _ = opens.take();

    const CREATES: usize = 24;
    for i in 0..CREATES {
        server.create(&format!("lean{i}"), "qwen");
    }
    for i in 0..CREATES {
        let alias = format!("lean{i}");
        assert!(server.store.read(&alias).is_some(), "{alias} has no file");
    }
    // Before this change each create opened both (the walk from the root:
    // manifests/, the host, the namespace, one `openat` each). The file
    // system watch and aliasd's check of its own files open neither.
    for (dir, count) in opens.take() {
        assert!(
            count < CREATES / 4,
            "{dir} was opened {count} times for {CREATES} creates"
        );
    }
}

#[test]
fn issue23_a_symlinked_namespace_is_never_written_through() {
    let server = Server::with_models(&["qwen"]);
    let outside = crate::support::tempdir("creates-lean-outside");
    let manifests = server.store.root().join("manifests");
    // A namespace created by a first alias, then swapped for a symlink to a
    // directory outside the store.
    server.create("elsewhere/first", "qwen");
    let namespace = manifests.join("registry.ollama.ai/elsewhere");
    std::fs::rename(&namespace, outside.path().join("moved")).expect("move away");
    std::os::unix::fs::symlink(outside.path().join("moved"), &namespace).expect("symlink");
    let before = crate::support::files_under(outside.path());

    let resp = server.put_alias("elsewhere/second", "qwen");
    assert!(resp.status == 200 || resp.status == 201, "{resp:?}");
    // Nothing was written through the symlink: the directory outside holds
    // only what was moved there.
    assert_eq!(crate::support::files_under(outside.path()), before);
    assert!(std::fs::symlink_metadata(&namespace)
        .expect("still there")
        .file_type()
        .is_symlink());
}
