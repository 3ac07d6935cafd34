//! The process's limit on open files, raised once from its soft value to
//! its hard one: each component loaded from the compile cache keeps its
//! file open (its code and memory images are mapped from it), beside one
//! socket per connection, and the common soft default of 1024 would cap a
//! node at a few hundred distinct components under load.

use std::sync::Once;

/// Raises the soft limit on open files to the hard limit, once per
/// process; a failure is logged and the old limit kept.
pub fn raise_to_hard_limit() {
    static RAISED: Once = Once::new();
    RAISED.call_once(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for getrlimit to fill in, and
        // setrlimit only reads it.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0
                || limit.rlim_cur >= limit.rlim_max
            {
                return;
            }
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    soft,
                    "cannot raise the limit on open files: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        raise_to_hard_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
