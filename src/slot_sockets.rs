//! `--balance reuseport`: one `SO_REUSEPORT` listener per worker slot, all
//! on the bind's address, held by sup.
//!
//! Slot 0's socket is the bind's own (the one in the handoff, the fd store
//! and `/metrics`); the others are bound at start, in slot order (so that
//! they join the kernel's group in that order), and at a scale-up when a
//! new slot's first worker spawns. Each is kept for sup's whole life: after
//! a scale-down it is steered to by nobody, and the next scale-up reuses it. A worker of slot
//! k gets slot k's socket at the bind's fd number: applications see
//! nothing new.
//!
//! The kernel picks a listener of the group for each new connection by
//! running the group's classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`,
//! unprivileged), which returns an index into the group's socket array:
//! sup's program draws a random number and maps it onto the indices of
//! the slots the core steers to ([`SlotSockets::steer`]). The array is the
//! order in which the sockets began listening, which is slot order, so slot
//! k is index k. The kernel removes a socket only once its last holder
//! closes it, and then moves the last one into its place; sup cannot see
//! when that happens (a retired worker's children, systemd's fd store may
//! hold one), so it never closes a slot socket while it runs: the array
//! never moves.
//!
//! Where the kernel refuses the program (or the bind's socket came without
//! `SO_REUSEPORT`: from a sup or systemd that bound it shared), that bind
//! stays shared, with one line in the log.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::handoff::HandedSlots;
use crate::sockets::{BoundSocket, LocalAddr};

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic; every architecture sup builds for).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// The per-slot sockets of every bind that has them.
#[derive(Debug, Default)]
pub struct SlotSockets {
    groups: Vec<Group>,
    /// The slots last steered to: a socket bound since joins the program.
    steered: Vec<usize>,
}

#[derive(Debug)]
struct Group {
    /// The bind's index among sup's sockets (its fd is slot 0's socket).
    bind: usize,
    name: String,
    local: SocketAddr,
    base: RawFd,
    backlog: i32,
    ipv6only: bool,
    /// Slot k's socket at `more[k - 1]` (and at index k of the kernel's array).
    more: Vec<OwnedFd>,
}

impl Group {
    fn fd(&self, slot: usize) -> Option<RawFd> {
        match slot {
            0 => Some(self.base),
            k => self.more.get(k - 1).map(AsRawFd::as_raw_fd),
        }
    }

    fn count(&self) -> usize {
        1 + self.more.len()
    }

    /// Bind slot sockets up to `slot` (in slot order); whether any was.
    fn grow(&mut self, slot: usize) -> std::io::Result<bool> {
        let before = self.count();
        while self.count() <= slot {
            let fd = crate::sockets::bind_reuseport(&self.local, self.backlog, self.ipv6only)?;
            self.more.push(fd);
        }
        Ok(self.count() > before)
    }

    fn steer(&self, slots: &[usize]) -> std::io::Result<()> {
        let count = self.count();
        let indices: Vec<u32> = slots.iter().filter(|&&k| k < count).map(|&k| k as u32).collect();
        let indices = if indices.is_empty() {
            (0..count as u32).collect()
        } else {
            indices
        };
        attach(self.base, &program(&indices))
    }
}

impl SlotSockets {
    /// Per-slot sockets for every bind that asks for them, adopting what a
    /// previous image handed over. A bind whose socket lacks
    /// `SO_REUSEPORT`, or whose kernel refuses the selection program,
    /// stays shared (said once, here).
    pub fn new(sockets: &[BoundSocket], handed: Vec<HandedSlots>, workers: usize) -> SlotSockets {
        let mut groups = Vec::new();
        let mut handed = handed;
        for (bind, s) in sockets.iter().enumerate() {
            let from_before = handed
                .iter()
                .position(|h| h.name == s.spec.name)
                .map(|i| handed.swap_remove(i));
            let wanted = s.spec.balance == Some(crate::bind::Balance::Reuseport);
            let LocalAddr::Tcp(local) = s.local else {
                if let Some(h) = from_before {
                    h.close();
                }
                continue;
            };
            if !wanted && from_before.is_none() {
                continue;
            }
            if !wanted {
                log::warn!(
                    "{}: per-slot sockets were handed over, and --balance shared takes effect only at a full restart; \
                     keeping them",
                    s.local
                );
            }
            if !crate::sockets::has_reuseport(&s.fd) {
                log::warn!(
                    "{}: --balance reuseport needs the socket bound with SO_REUSEPORT, and this one was not (it was \
                     passed in by systemd or by a sup that shared it); this bind stays shared until a full restart",
                    s.local
                );
                if let Some(h) = from_before {
                    h.close();
                }
                continue;
            }
            let mut group = Group {
                bind,
                name: s.spec.name.clone(),
                local,
                base: s.raw_fd(),
                backlog: s.spec.backlog.unwrap_or_else(crate::sockets::default_backlog),
                ipv6only: s.spec.ipv6only,
                more: Vec::new(),
            };
            let mut adopted = false;
            if let Some(h) = from_before {
                match h.adopt(&local) {
                    Ok(more) => {
                        log::info!("{}: adopted {} per-slot socket(s)", s.local, more.len() + 1);
                        group.more = more;
                        adopted = true;
                    }
                    Err(why) => log::error!("{}: not adopting the per-slot sockets: {why}", s.local),
                }
            }
            // An adopted group keeps the program the previous sup attached
            // (it belongs to the group) until the core steers. A new one is
            // tried here, with every slot's socket bound at once: a kernel
            // that refuses the program, or a slot socket that cannot join
            // (the bind's socket belongs to another user, as with a systemd
            // .socket unit), leaves the bind shared.
            let ready = if adopted {
                Ok(())
            } else {
                group
                    .steer(&[])
                    .and_then(|()| group.grow(workers.saturating_sub(1)).map(drop))
            };
            if let Err(e) = ready {
                log::warn!(
                    "{}: --balance reuseport cannot work here ({}); this bind falls back to one shared socket",
                    s.local,
                    crate::files::os_error(&e)
                );
                continue;
            }
            groups.push(group);
        }
        for h in handed {
            h.close();
        }
        SlotSockets {
            groups,
            steered: Vec::new(),
        }
    }

    /// Whether any bind has per-slot sockets.
    pub fn any(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Whether bind `bind` (its index) has per-slot sockets.
    pub fn has(&self, bind: usize) -> bool {
        self.groups.iter().any(|g| g.bind == bind)
    }

    /// The fd each bind passes to a worker of `slot`, in bind order: the
    /// slot's own socket where the bind has them (bound now if it is the
    /// slot's first worker), the bind's socket otherwise.
    pub fn fds_for(&mut self, slot: usize, sockets: &[BoundSocket]) -> std::io::Result<Vec<RawFd>> {
        let mut fds: Vec<RawFd> = sockets.iter().map(BoundSocket::raw_fd).collect();
        let mut grew = false;
        for g in &mut self.groups {
            grew |= g.grow(slot)?;
            if let (Some(fd), Some(at)) = (g.fd(slot), fds.get_mut(g.bind)) {
                *at = fd;
            }
        }
        // A slot steered to before its socket existed gets its share now.
        if grew {
            self.steer(&self.steered.clone());
        }
        Ok(fds)
    }

    /// New connections go to these slots only (see the module's doc).
    pub fn steer(&mut self, slots: &[usize]) {
        self.steered = slots.to_vec();
        for g in &self.groups {
            if let Err(e) = g.steer(slots) {
                log::error!(
                    "{}: cannot swap the reuseport selection program: {}",
                    g.local,
                    crate::files::os_error(&e)
                );
            }
        }
    }

    /// Each slot's queued connections, all binds together, by slot.
    pub fn depths(&self) -> Vec<u32> {
        let mut depths = Vec::new();
        for (_, per_slot) in self.queues() {
            if depths.len() < per_slot.len() {
                depths.resize(per_slot.len(), 0);
            }
            for (d, (queued, _)) in depths.iter_mut().zip(per_slot) {
                *d += queued;
            }
        }
        depths
    }

    /// Per bind name: each slot's (queued, backlog), slot 0 first.
    pub fn queues(&self) -> Vec<(&str, Vec<(u32, u32)>)> {
        self.groups
            .iter()
            .map(|g| {
                let per_slot = (0..g.count())
                    .map(|k| g.fd(k).and_then(crate::sockets::tcp_accept_queue).unwrap_or((0, 0)))
                    .collect();
                (g.name.as_str(), per_slot)
            })
            .collect()
    }

    /// The sockets of slots 1 and up (slot 0's is the bind's own).
    pub fn extra_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.groups.iter().flat_map(|g| g.more.iter().map(AsRawFd::as_raw_fd))
    }

    /// The sockets of slots 1 and up by the names they have in systemd's fd
    /// store (`NAME.slotK`; slot 0's is the bind's own, stored as `NAME`).
    pub fn store_names(&self) -> Vec<(String, RawFd)> {
        self.groups
            .iter()
            .flat_map(|g| {
                g.more
                    .iter()
                    .enumerate()
                    .map(|(i, fd)| (store_name(&g.name, i + 1), fd.as_raw_fd()))
            })
            .collect()
    }

    /// What the next image adopts.
    pub fn handed(&self) -> Vec<HandedSlots> {
        self.groups
            .iter()
            .map(|g| HandedSlots {
                name: g.name.clone(),
                fds: g.more.iter().map(AsRawFd::as_raw_fd).collect(),
            })
            .collect()
    }
}

/// Slot `k`'s socket of bind `name` in systemd's fd store.
pub fn store_name(name: &str, slot: usize) -> String {
    format!("{name}.slot{slot}")
}

/// Split the per-slot sockets systemd passed back (`NAME.slotK`, K ≥ 1) off
/// the activated sockets, by bind name, as the next image would get them in
/// a handoff: slots 1.. in order. A slot missing from the run ends it:
/// the sockets past the gap are closed and their names returned, to be
/// removed from the store.
pub fn from_store(activated: &mut Vec<crate::sockets::Activated>) -> (Vec<HandedSlots>, Vec<String>) {
    let mut by_bind: std::collections::BTreeMap<String, Vec<(usize, OwnedFd)>> = Default::default();
    let mut rest = Vec::new();
    for a in activated.drain(..) {
        let parsed = a.name.as_deref().and_then(|n| {
            let (bind, k) = n.rsplit_once(".slot")?;
            let k: usize = k.parse().ok().filter(|&k| k >= 1)?;
            Some((bind.to_string(), k))
        });
        match parsed {
            Some((bind, k)) => by_bind.entry(bind).or_default().push((k, a.fd)),
            None => rest.push(a),
        }
    }
    *activated = rest;
    let mut handed = Vec::new();
    let mut dropped = Vec::new();
    for (name, mut slots) in by_bind {
        slots.sort_by_key(|(k, _)| *k);
        let mut fds = Vec::new();
        for (k, fd) in slots {
            if k == fds.len() + 1 {
                fds.push(std::os::fd::IntoRawFd::into_raw_fd(fd));
            } else {
                dropped.push(store_name(&name, k));
            }
        }
        handed.push(HandedSlots { name, fds });
    }
    (handed, dropped)
}

/// A classic BPF program that returns one of `indices`, drawn at random
/// (`indices` is never empty: the caller falls back to every index).
fn program(indices: &[u32]) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    let n = indices.len() as u32;
    if n == 1 {
        return vec![op(RET_K, 0, 0, indices[0])];
    }
    let mut code = vec![op(LD_W_ABS, 0, 0, random), op(MOD_K, 0, 0, n)];
    if indices.iter().enumerate().all(|(i, &x)| i as u32 == x) {
        // 0..n: the random number is the index.
        code.push(op(RET_A, 0, 0, 0));
        return code;
    }
    for (i, &index) in indices.iter().enumerate() {
        code.push(op(JEQ_K, 0, 1, i as u32));
        code.push(op(RET_K, 0, 0, index));
    }
    code.push(op(RET_K, 0, 0, indices[0]));
    code
}

fn attach(fd: RawFd, code: &[libc::sock_filter]) -> std::io::Result<()> {
    crate::sockets::attach_program(fd, SO_ATTACH_REUSEPORT_CBPF, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bind::BindSpec;

    /// One bind on loopback with `balance=reuseport`, and its address.
    fn bound() -> (Vec<BoundSocket>, SocketAddr) {
        let sockets = crate::sockets::bind_all(&[BindSpec {
            balance: Some(crate::bind::Balance::Reuseport),
            ..BindSpec::parse("127.0.0.1:0").unwrap()
        }])
        .unwrap();
        let LocalAddr::Tcp(addr) = sockets[0].local else {
            panic!()
        };
        (sockets, addr)
    }

    fn reuseport(workers: usize) -> (Vec<BoundSocket>, SlotSockets, SocketAddr) {
        let (sockets, addr) = bound();
        let mut slots = SlotSockets::new(&sockets, Vec::new(), 1);
        assert!(slots.any());
        slots.fds_for(workers - 1, &sockets).unwrap();
        (sockets, slots, addr)
    }

    fn connect(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
        (0..n).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect()
    }

    #[test]
    fn each_slot_has_its_own_socket_at_the_binds_fd() {
        let (sockets, mut slots, _) = reuseport(3);
        let a = slots.fds_for(0, &sockets).unwrap();
        let b = slots.fds_for(2, &sockets).unwrap();
        assert_eq!(a, vec![sockets[0].raw_fd()], "slot 0's socket is the bind's own");
        assert_ne!(a, b);
        assert_eq!(slots.depths(), vec![0, 0, 0]);
    }

    #[test]
    fn new_connections_go_only_to_the_steered_slots() {
        let (_sockets, mut slots, addr) = reuseport(4);
        slots.steer(&[1, 3]);
        let _held = connect(addr, 40);
        let d = slots.depths();
        assert_eq!(d.iter().sum::<u32>(), 40, "{d:?}");
        assert_eq!((d[0], d[2]), (0, 0), "{d:?}");
        assert!(d[1] > 5 && d[3] > 5, "spread over both: {d:?}");
        slots.steer(&[2]);
        let _more = connect(addr, 10);
        assert_eq!(slots.depths()[2], 10);
    }

    #[test]
    fn every_slot_gets_a_share() {
        let (_sockets, mut slots, addr) = reuseport(4);
        slots.steer(&[0, 1, 2, 3]);
        let _held = connect(addr, 200);
        let d = slots.depths();
        assert_eq!(d.iter().sum::<u32>(), 200);
        assert!(d.iter().all(|&n| n >= 20), "random over 4 slots: {d:?}");
    }

    #[test]
    fn a_slot_socket_is_kept_for_the_next_worker_of_the_slot() {
        let (sockets, mut slots, addr) = reuseport(4);
        let before = slots.fds_for(3, &sockets).unwrap();
        // Scaled down to 2, then up again: the same socket, the same index.
        slots.steer(&[0, 1]);
        let _held = connect(addr, 6);
        assert_eq!(slots.depths()[2..], [0, 0]);
        assert_eq!(slots.fds_for(3, &sockets).unwrap(), before);
        slots.steer(&[3]);
        let _more = connect(addr, 3);
        assert_eq!(slots.depths()[3], 3);
    }

    #[test]
    fn a_slot_steered_to_before_its_socket_existed_gets_its_share_once_bound() {
        let (sockets, addr) = bound();
        let mut slots = SlotSockets::new(&sockets, Vec::new(), 1);
        slots.steer(&[0, 1, 2]);
        slots.fds_for(2, &sockets).unwrap();
        let _held = connect(addr, 90);
        let d = slots.depths();
        assert!(d.iter().all(|&n| n >= 10), "{d:?}");
    }

    #[test]
    fn programs() {
        assert_eq!(program(&[2]).len(), 1);
        assert_eq!(program(&[0, 1, 2]).len(), 3);
        assert_eq!(program(&[1, 3]).len(), 2 + 2 * 2 + 1);
    }

    #[test]
    fn a_shared_socket_stays_shared() {
        let mut sockets = crate::sockets::bind_all(&[BindSpec::parse("127.0.0.1:0").unwrap()]).unwrap();
        assert!(!SlotSockets::new(&sockets, Vec::new(), 1).any());
        // Asked for, but the socket came without SO_REUSEPORT (systemd, or
        // a sup that shared it): it stays shared.
        sockets[0].spec.balance = Some(crate::bind::Balance::Reuseport);
        assert!(!SlotSockets::new(&sockets, Vec::new(), 1).any());
    }
}
