//! The signal thread: SIGHUP reloads, SIGTERM and SIGINT drain and exit.
//! Signals are blocked in every other thread ([`block`], before any thread
//! starts), so this one takes them all with `sigwait`.

use crate::{info, warn};

/// Block SIGHUP, SIGTERM and SIGINT in this thread (and the threads it
/// starts), so that only the signal thread takes them; returns the set.
pub fn block() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait up to `wait` for one of the signals in `set`.
fn next_signal(set: &libc::sigset_t, wait: Option<std::time::Duration>) -> Option<i32> {
    // SAFETY: `set` holds signals blocked in every thread; the timespec is local.
    unsafe {
        match wait {
            None => {
                let mut sig = 0;
                (libc::sigwait(set, &mut sig) == 0).then_some(sig)
            }
            Some(d) => {
                let ts = libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                };
                let sig = libc::sigtimedwait(set, std::ptr::null_mut(), &ts);
                (sig > 0).then_some(sig)
            }
        }
    }
}

/// Reads the configuration again (the file, with the flags given at start
/// over it).
pub type Loader = Box<dyn Fn() -> Result<crate::config::Config, String> + Send>;

/// The signal thread.
///
/// SIGHUP reloads the configuration ([`super::reload`]), as `nginx -s
/// reload` does (`systemctl reload ringway`, or after a certbot renewal):
/// new connections get the new configuration and certificate, open sessions
/// go on. A file that does not load or validate is refused, with the file,
/// key and reason in the log, and the running configuration stays.
///
/// SIGTERM and SIGINT shut down gracefully: no new connections, answers to
/// requests in flight still go out, then clients get close 1001 and the
/// process exits. A second one exits at once.
pub fn spawn(
    set: libc::sigset_t,
    certs: Option<std::sync::Arc<crate::tls::Certs>>,
    generations: std::sync::Arc<super::reload::Generations>,
    load: Loader,
    stopper: super::Stopper,
) {
    // Reloads run on a thread of their own: reading the file may ask nodes
    // what they are (with a deadline, but seconds), and SIGTERM must be
    // served meanwhile. SIGHUPs while one runs make one more, not many.
    let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
    let reloads = generations.clone();
    let reloader = std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            while asked.recv().is_ok() {
                reload(&load, &reloads, certs.as_deref());
            }
        });
    if let Err(e) = reloader {
        warn!("cannot start the reload thread: {e}; SIGHUP is ignored");
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Some(sig) = next_signal(&set, None) else {
                return;
            };
            if sig == libc::SIGHUP {
                // Full: a reload is already asked for, and will read the file as it is now.
                let _ = ask.try_send(());
                continue;
            }
            info!("shutting down: no new connections; sessions finish and close (1001)");
            generations.draining();
            let done = stopper
                .shutdown(|d| matches!(next_signal(&set, Some(d)), Some(s) if s != libc::SIGHUP));
            if done {
                info!("all sessions closed; exiting");
            } else {
                warn!("exiting with sessions still open");
            }
            // What the sessions used is written a last time.
            generations.finish_usage();
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        warn!("cannot start the signal thread: {e}");
    }
}

/// One reload (SIGHUP), as `nginx -s reload`: the file read again and
/// applied, or refused with the file, key and reason in the log.
fn reload(
    load: &Loader,
    generations: &super::reload::Generations,
    certs: Option<&crate::tls::Certs>,
) {
    // A panic in a reload is a refused reload: this thread lives on.
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load().and_then(|c| generations.apply(c, certs))
    }))
    .unwrap_or_else(|_| Err("the reload panicked (a bug: please report it)".into()));
    let running = generations.number();
    match applied {
        Ok(notes) => {
            info!("SIGHUP: configuration reloaded (generation {running})");
            for n in notes {
                info!("SIGHUP: {n}");
            }
        }
        Err(e) => {
            generations.refused();
            crate::error!("SIGHUP: reload refused, generation {running} stays: {e}");
        }
    }
}
