//! A Linux TUN device (layer 3, no packet-information header): each read is one IP packet the
//! kernel routed into it, each write one packet the kernel takes as received on it. The
//! device itself comes from the `tun` crate (the project forbids `unsafe`, and creating one is
//! an ioctl).
//!
//! Why TUN and not a kernel tunnel (VXLAN, WireGuard): the packets must travel on the QUIC
//! connection the node already holds (through NAT, under its certificate, relayed by the hub),
//! and only a userspace device hands them to edgecore. Why not persistent: the device goes when
//! its file descriptor closes, with its routes, so an edgecore killed -9 leaves no route
//! pointing into a device nobody reads; the next edgecore makes it afresh.

use tun::AbstractDevice;

/// An open TUN device.
pub struct Tun {
    device: tun::AsyncDevice,
    name: String,
}

impl Tun {
    /// Creates the TUN device `name` in this process's network namespace, down and without
    /// addresses (the overlay configures it with `ip`).
    pub fn open(name: &str) -> std::io::Result<Self> {
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not an interface name (1 to 15 bytes, no '/')"),
            ));
        }
        let mut config = tun::Configuration::default();
        config.tun_name(name).layer(tun::Layer::L3);
        let device = tun::create_as_async(&config).map_err(std::io::Error::other)?;
        let name = device.tun_name().map_err(std::io::Error::other)?;
        Ok(Self { device, name })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf`, waiting for one.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.device.recv(buf).await
    }

    /// Writes one packet, waiting only if the device's queue is full (it drains at kernel
    /// speed; the link's reader is this task, so a full queue slows the relay, not memory).
    pub async fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        self.device.send(packet).await.map(|_| ())
    }
}
