//! The hub's overlay relay on the wire, with node sessions driven by hand ([`SyncClient`]) over
//! real QUIC: a pod packet from one node's pod CIDR to another's arrives on the other node's
//! connection exactly as sent; a packet whose source is not the sender's own, one for a CIDR
//! no connected node holds, and bytes that are no IP packet are dropped and counted, and the
//! sender's session goes on; a node whose session ended gets nothing.

use anyhow::{Context, Result};
use protocol::messages::EdgeObject;
use protocol::overlay::Cidr;
use skerry_tests::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(800);

/// A UDP/IPv4 packet from `src` to `dst` with `payload`.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// The `n`th host address of an IPv4 CIDR.
fn host(c: &Cidr, n: u32) -> Ipv4Addr {
    match c.network() {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) + n),
        IpAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// Opens a v6 session for `node`, reads its snapshot, and returns it with its pod CIDR (from
/// its network settings, which it must have been sent with its overlay routes) and the
/// node's identity directory.
async fn session(cloud: &Cloud, node: &str) -> Result<(SyncClient, Cidr, tempfile::TempDir)> {
    let dir = join_identity(cloud, node)?;
    let mut c = SyncClient::connect(cloud, dir.path(), node, 0).await?;
    let snap = c.next_batch(DEADLINE).await?;
    let mut cidr = None;
    let mut overlay = false;
    for u in &snap.upserts {
        match &u.object {
            EdgeObject::Network(n) => cidr = n.pod_cidr.clone(),
            EdgeObject::Overlay(_) => overlay = true,
            _ => {}
        }
    }
    anyhow::ensure!(overlay, "{node} got no overlay routes: {snap:?}");
    c.ack(snap.revision).await?;
    Ok((c, Cidr::parse(&cidr.context("no pod CIDR")?)?, dir))
}

async fn counted(cloud: &Cloud, result: &str) -> Result<f64> {
    Ok(cloud
        .metric_series(&format!(
            "skerry_hub_overlay_packets_total{{result=\"{result}\"}}"
        ))
        .await?
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hub_relays_a_nodes_own_pod_packets_and_drops_the_rest() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let (a, cidr_a, _dir_a) = session(&cloud, "relay-a").await?;
    let (b, cidr_b, _dir_b) = session(&cloud, "relay-b").await?;
    assert_ne!(cidr_a, cidr_b);

    // A's pod to B's pod: relayed byte for byte.
    let good = packet(host(&cidr_a, 5), host(&cidr_b, 7), b"hello b");
    let got = eventually("B receives A's packet", DEADLINE, || async {
        a.send_datagram(good.clone())?;
        b.datagram(QUIET).await
    })
    .await?;
    assert_eq!(got, good);
    // And back.
    let reply = packet(host(&cidr_b, 7), host(&cidr_a, 5), b"hello a");
    b.send_datagram(reply.clone())?;
    assert_eq!(a.datagram(DEADLINE).await?, Some(reply));

    // A speaking for B's pods, to a CIDR nobody holds, to itself, or in garbage: dropped.
    let before = (
        counted(&cloud, "spoofed").await?,
        counted(&cloud, "no_route").await?,
        counted(&cloud, "malformed").await?,
        counted(&cloud, "loop").await?,
    );
    a.send_datagram(packet(host(&cidr_b, 9), host(&cidr_b, 7), b"spoof"))?;
    a.send_datagram(packet(
        host(&cidr_a, 5),
        Ipv4Addr::new(192, 0, 2, 1),
        b"nowhere",
    ))?;
    a.send_datagram(vec![0x45, 0, 0])?;
    a.send_datagram(packet(host(&cidr_a, 5), host(&cidr_a, 6), b"loop"))?;
    eventually("the four drops counted", DEADLINE, || async {
        let now = (
            counted(&cloud, "spoofed").await?,
            counted(&cloud, "no_route").await?,
            counted(&cloud, "malformed").await?,
            counted(&cloud, "loop").await?,
        );
        Ok(
            (now.0 > before.0 && now.1 > before.1 && now.2 > before.2 && now.3 > before.3)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(b.datagram(QUIET).await?, None, "nothing of it reached B");
    assert_eq!(a.datagram(QUIET).await?, None, "nothing came back to A");
    // A's session survived its garbage: its own packets still go.
    a.send_datagram(good.clone())?;
    assert_eq!(b.datagram(DEADLINE).await?, Some(good.clone()));

    // B's session ends: its route goes with it.
    drop(b);
    let gone = counted(&cloud, "no_route").await?;
    eventually(
        "packets for B are dropped once B is away",
        DEADLINE,
        || async {
            a.send_datagram(good.clone())?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok((counted(&cloud, "no_route").await? > gone).then_some(()))
        },
    )
    .await?;

    Ok(())
}
