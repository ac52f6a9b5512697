//! Batched UDP sends: one frame written to many sessions is many datagrams to many addresses,
//! handed to the kernel `BATCH` at a time with `sendmmsg(2)` instead of one `sendto(2)` each.
//! Nothing waits: a full socket buffer loses the rest of the batch, as the network may (NACKs
//! and the next keyframe repair it), exactly as a failed `try_send_to` did.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Datagrams per `sendmmsg` call (the kernel takes up to `UIO_MAXIOV`, 1024).
pub(super) const BATCH: usize = 64;

#[derive(Default)]
pub(super) struct SendBatch {
    queued: Vec<(SocketAddr, Vec<u8>)>,
}

impl SendBatch {
    /// Queues one datagram; sends the batch once it is full. Returns the datagrams lost.
    pub(super) fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: Vec<u8>) -> usize {
        self.queued.push((to, data));
        if self.queued.len() >= BATCH {
            self.flush(socket)
        } else {
            0
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued. Returns the datagrams lost (a full send buffer, or a
    /// destination the kernel refuses).
    pub(super) fn flush(&mut self, socket: &impl AsRawFd) -> usize {
        if self.queued.is_empty() {
            return 0;
        }
        let fd = socket.as_raw_fd();
        // Built per call (at most BATCH entries): they hold raw pointers into one another and
        // into the queued buffers, valid only while nothing moves.
        let total = self.queued.len();
        let mut addrs: Vec<libc::sockaddr_storage> = Vec::with_capacity(total);
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(total);
        let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(total);
        for (to, data) in &self.queued {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = write_sockaddr(to, &mut storage);
            addrs.push(storage);
            iovecs.push(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths); the pointers
            // are filled in below, once the vectors are full and no longer move.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_namelen = len;
            headers.push(h);
        }
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        let mut at = 0;
        let mut lost = 0;
        while at < total {
            let rest = &mut headers[at..];
            // SAFETY: `rest` points at `rest.len()` initialised headers whose name and iovec
            // pointers refer to `addrs`, `iovecs` and the queued buffers, all alive and
            // unmoved for the duration of the call.
            let sent =
                unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
            if sent > 0 {
                at += sent as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock || sent == 0 {
                lost += total - at;
                break;
            }
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // This datagram's destination is refused (unreachable, filtered): skip it only.
            lost += 1;
            at += 1;
        }
        self.queued.clear();
        lost
    }
}

fn write_sockaddr(a: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every queued datagram arrives, in order, at its own destination, across batch
    /// boundaries; nothing is lost on an idle loopback.
    #[test]
    fn a_batch_reaches_every_destination() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<_> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut b = SendBatch::default();
        let mut lost = 0;
        for i in 0..(BATCH + 10) {
            let to = rx[i % 3].local_addr().unwrap();
            lost += b.push(&tx, to, vec![i as u8; 100 + i]);
        }
        assert!(!b.is_empty(), "the tail waits for a flush");
        lost += b.flush(&tx);
        assert!(b.is_empty());
        assert_eq!(lost, 0);
        let mut buf = [0u8; 2048];
        for (k, r) in rx.iter().enumerate() {
            r.set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            let mut seen = Vec::new();
            while seen.len() < (BATCH + 10 - k).div_ceil(3) {
                let (n, from) = r.recv_from(&mut buf).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                seen.push((buf[0], n));
            }
            for (j, (first, n)) in seen.into_iter().enumerate() {
                let i = k + 3 * j;
                assert_eq!((first as usize, n), (i % 256, 100 + i));
            }
        }
    }
}
