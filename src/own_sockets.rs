//! sup's own unix sockets — the notify socket and the Einhorn command
//! socket — and the private directory they live in: made at first start,
//! adopted from the handoff after a hot restart.
//!
//! Adopting rather than re-creating keeps the address workers were given
//! and whatever was queued in the socket during the exec. A handed socket is
//! adopted only if it still fits the configuration (`--notify-socket` may
//! have switched between a path and an abstract name, `--einhorn-ack` may
//! have been turned off); otherwise it is closed and a fresh one is made.
//! What fails its checks is logged, closed, and replaced: the new image must
//! come up either way.

use std::os::fd::RawFd;

use crate::config::SocketPlace;
use crate::einhorn::EinhornSocket;
use crate::handoff::{self, Handoff};
use crate::notify::NotifySocket;
use crate::runtime_dir::{RuntimeDir, RuntimeDirError, UnixName};

#[derive(Debug, thiserror::Error)]
pub enum OwnSocketError {
    #[error(transparent)]
    Dir(#[from] RuntimeDirError),
    #[error("cannot create the notify socket {0}")]
    Notify(String, #[source] std::io::Error),
    #[error("cannot create the Einhorn command socket {0}")]
    Einhorn(String, #[source] std::io::Error),
}

/// The sockets and their directory. Dropping it closes the sockets and
/// removes the directory.
pub struct OwnSockets {
    pub notify: NotifySocket,
    pub einhorn: Option<EinhornSocket>,
    /// Declared last: dropped after the sockets in it are closed.
    dir: Option<RuntimeDir>,
}

impl OwnSockets {
    /// Make (or, with a handoff, adopt) the notify socket, the Einhorn
    /// socket when `einhorn` is on, and the directory when `place` is
    /// `Path`. `owner` is the workers' (uid, gid) when they run as another
    /// user.
    pub fn open(
        place: SocketPlace,
        einhorn: bool,
        owner: Option<(u32, u32)>,
        handoff: Option<&Handoff>,
    ) -> Result<OwnSockets, OwnSocketError> {
        let handed_dir = handoff.and_then(|h| h.runtime_dir.as_deref());
        let dir = match place {
            SocketPlace::Abstract => None,
            SocketPlace::Path => Some(match handed_dir.map(|d| RuntimeDir::adopt(d, owner)) {
                Some(Ok(d)) => d,
                Some(Err(why)) => {
                    log::error!("hot restart: not adopting the runtime directory: {why}; making a new one");
                    RuntimeDir::create(owner)?
                }
                None => RuntimeDir::create(owner)?,
            }),
        };
        // A handed directory that the configuration no longer uses is
        // adopted only to be removed.
        if dir.is_none()
            && let Some(old) = handed_dir.and_then(|d| RuntimeDir::adopt(d, owner).ok())
        {
            log::info!("removing the previous runtime directory {}", old.path().display());
        }
        let fits = |handed: &handoff::HandedUnix, entry: &str| match (&dir, UnixName::parse(&handed.addr)) {
            (Some(d), UnixName::Path(p)) => p == d.join(entry),
            (None, UnixName::Abstract(_)) => true,
            _ => false,
        };

        let handed_notify = handoff.and_then(|h| h.notify.as_ref());
        let notify = match handed_notify.filter(|h| fits(h, NOTIFY_ENTRY)) {
            Some(h) => match NotifySocket::adopt(h) {
                Ok(s) => Some(s),
                Err(why) => {
                    log::error!("hot restart: not adopting the notify socket: {why}; making a new one");
                    None
                }
            },
            None => {
                close_unused(handed_notify.map(|h| h.fd));
                None
            }
        };
        let notify = match notify {
            Some(s) => s,
            None => {
                let name = match &dir {
                    Some(d) => UnixName::Path(d.join(NOTIFY_ENTRY)),
                    None => UnixName::random_abstract("notify"),
                };
                NotifySocket::bind(name.clone(), owner).map_err(|e| OwnSocketError::Notify(name.to_string(), e))?
            }
        };

        let handed_einhorn = handoff.and_then(|h| h.einhorn.as_ref());
        let adopted = match handed_einhorn.filter(|h| einhorn && fits(h, EINHORN_ENTRY)) {
            Some(h) => EinhornSocket::adopt(h)
                .inspect_err(|why| {
                    log::error!("hot restart: not adopting the Einhorn socket: {why}; making a new one");
                })
                .ok(),
            None => {
                close_unused(handed_einhorn.map(|h| h.fd));
                None
            }
        };
        let einhorn = match (einhorn, adopted) {
            (false, _) => None,
            (true, Some(s)) => Some(s),
            (true, None) => {
                let name = match &dir {
                    Some(d) => UnixName::Path(d.join(EINHORN_ENTRY)),
                    None => UnixName::random_abstract("einhorn"),
                };
                Some(
                    EinhornSocket::bind(name.clone(), owner)
                        .map_err(|e| OwnSocketError::Einhorn(name.to_string(), e))?,
                )
            }
        };
        Ok(OwnSockets { notify, einhorn, dir })
    }

    /// Record them in the handoff for the next image (whose `fds()` are
    /// the ones that survive the exec).
    pub fn hand_over(&self, h: &mut Handoff) {
        h.runtime_dir = self.dir.as_ref().map(|d| d.path().to_path_buf());
        h.notify = Some(self.notify.handed());
        h.einhorn = self.einhorn.as_ref().map(EinhornSocket::handed);
    }
}

/// The sockets' file names in the runtime directory.
const NOTIFY_ENTRY: &str = "notify";
const EINHORN_ENTRY: &str = "einhorn.sock";

fn close_unused(fd: Option<RawFd>) {
    if let Some(fd) = fd {
        handoff::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fit_the_room_the_directory_leaves() {
        for entry in [NOTIFY_ENTRY, EINHORN_ENTRY] {
            assert!(entry.len() <= crate::runtime_dir::LONGEST_ENTRY.len());
        }
    }

    fn snapshot() -> crate::core::Snapshot {
        crate::core::Core::new(crate::core::tests::settings(1)).snapshot(std::time::Instant::now(), 0)
    }

    #[test]
    fn a_handed_socket_is_adopted_when_it_fits_and_replaced_when_not() {
        let first = OwnSockets::open(SocketPlace::Path, true, None, None).unwrap();
        let mut h = Handoff::new("sup".into(), "/".into(), snapshot());
        first.hand_over(&mut h);
        let dir = h.runtime_dir.clone().unwrap();
        let (notify, einhorn) = (
            first.notify.name.to_string(),
            first.einhorn.as_ref().unwrap().name.to_string(),
        );
        // The next image owns them now; the old one must not remove the directory.
        std::mem::forget(first);
        let second = OwnSockets::open(SocketPlace::Path, true, None, Some(&h)).unwrap();
        assert_eq!(second.notify.name.to_string(), notify);
        assert_eq!(second.einhorn.as_ref().unwrap().name.to_string(), einhorn);
        assert_eq!(
            second.notify.raw_fd(),
            h.notify.as_ref().unwrap().fd,
            "the same socket, not a new one"
        );
        let mut h2 = Handoff::new("sup".into(), "/".into(), snapshot());
        second.hand_over(&mut h2);
        std::mem::forget(second);
        // Switched to abstract addresses and Einhorn off: the directory goes.
        let third = OwnSockets::open(SocketPlace::Abstract, false, None, Some(&h2)).unwrap();
        assert!(third.notify.name.is_abstract());
        assert!(third.einhorn.is_none());
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}
