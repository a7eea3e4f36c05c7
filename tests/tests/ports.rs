//! The client port and the peer port: what each serves and refuses, and the bounds on
//! the wire (message sizes, connections per client).

mod common;

use std::io::Read as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use dynamo_proto::v1::{
    CommitRequest, FinalizeRequest, MapsRequest, NodeInfoRequest, PartitionMapRequest, PutRequest,
    RepairRequest, ReplicaReadRequest,
};
use dynamo_tests::{http_get, Cluster, Options};
use tonic::Code;

#[tokio::test]
async fn the_client_port_serves_clients_and_refuses_what_peers_do() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options::default());
        put_ok(&c, 0, "k", "v", &[]).await;

        // Replication is not on the client port at all.
        let read = ReplicaReadRequest {
            keys: vec![b"k".to_vec().into()],
            cluster_id: "test-cluster".into(),
            map_epoch: 0,
        };
        let mut on_client_port = dynamo_proto::v1::replica_client::ReplicaClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].grpc))
                .unwrap()
                .connect_lazy(),
        );
        let refused = on_client_port.read(read.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
        let answered = c
            .replica(0)
            .read(read)
            .await
            .expect("the peer port serves it");
        assert_eq!(answered.into_inner().sets.len(), 1);

        // The admin calls that change the cluster are refused, and say where they are
        // served; the others answer.
        let mut admin = c.client_admin(0);
        let peer = c.nodes[0].peer.to_string();
        for status in [
            admin
                .commit(CommitRequest {
                    map: None,
                    forwarded: false,
                })
                .await
                .unwrap_err(),
            admin
                .finalize(FinalizeRequest {
                    epoch: 1,
                    forwarded: false,
                })
                .await
                .unwrap_err(),
            admin
                .repair(RepairRequest { partition: None })
                .await
                .unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(
                status.message().contains(&peer) && status.message().contains("peer port"),
                "{status:?}"
            );
        }
        admin.maps(MapsRequest {}).await.expect("maps is read-only");
        let info = admin
            .node_info(NodeInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.advertise, peer, "the address in maps is the peer port");
        assert_eq!(info.client_addr, c.nodes[0].grpc.to_string());
        // The repair the client port refused runs on the peer port.
        c.admin(0)
            .repair(RepairRequest { partition: Some(0) })
            .await
            .expect("repair on the peer port");

        // Clients routing by key are given every member's client port.
        let map = admin
            .partition_map(PartitionMapRequest {})
            .await
            .expect("map")
            .into_inner();
        for m in &map.members {
            let i: usize = m.id["node-".len()..].parse::<usize>().unwrap() - 1;
            assert_eq!(m.addr, c.nodes[i].grpc.to_string(), "{m:?}");
        }
        // ...and the Rust client finds the peer API by itself for a change.
        let client = dynamo_client::Client::connect(&[c.nodes[1].grpc.to_string()])
            .await
            .unwrap();
        let peer_api = client.peer_api().await.expect("peer api");
        assert_eq!(peer_api.addrs(), [c.nodes[1].peer.to_string()]);
        peer_api
            .repair(Some(1))
            .await
            .expect("repair through the peer api");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn messages_are_bounded_by_the_configured_sizes() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            extra: vec!["--max-value-bytes".into(), "1000".into()],
            ..Options::default()
        });
        put_ok(&c, 0, "keep", "original", &[]).await;
        // A value far past the limit is not even decoded: the message size limit comes
        // from max_value_bytes (plus room for a key and a context), not 64 MiB.
        let huge = PutRequest {
            key: b"keep".to_vec(),
            value: vec![7; 2 << 20],
            context: Vec::new(),
            w: None,
        };
        let refused = c.kv(0).put(huge).await.unwrap_err();
        assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
        assert!(
            refused.message().contains("message length too large"),
            "{refused:?}"
        );
        // One just past the value limit is decoded and refused with its own error.
        let over = PutRequest {
            key: b"keep".to_vec(),
            value: vec![7; 1001],
            context: Vec::new(),
            w: None,
        };
        let refused = c.kv(0).put(over).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("limit is 1000 bytes"),
            "{refused:?}"
        );
        let kept = get_ok(&c, 1, "keep").await;
        assert_eq!(values(&kept), ["original"]);
    })
    .await
    .expect("test timed out");
}

/// Whether the server closed `conn` (EOF or reset) within `limit`.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    // An open HTTP/2 server connection sends nothing until it hears a preface: a read
    // times out. One closed at once reads EOF or a reset.
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test]
async fn a_client_holding_its_bound_of_connections_cannot_open_more() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            extra: vec!["--max-connections-per-client".into(), "3".into()],
            ..Options::default()
        });
        let addr = c.nodes[0].grpc;
        let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for conn in &mut held {
            assert!(!closed_within(conn, Duration::from_millis(300)), "admitted");
        }
        let mut fourth = TcpStream::connect(addr).unwrap();
        assert!(
            closed_within(&mut fourth, Duration::from_secs(5)),
            "the fourth connection from one address is closed"
        );
        let (_, metrics) = http_get(c.nodes[0].http, "/metrics").expect("metrics");
        let refused: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("dynamo_connections_refused_total "))
            .expect("the refusals are counted")
            .parse()
            .unwrap();
        assert!(refused >= 1.0, "{refused}");
        // Peers are counted apart: the peer port still takes connections (gossip and
        // replication go on), and closing held connections lets the client back in.
        put_ok(&c, 1, "replicated", "v", &[]).await;
        held.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let client = dynamo_client::Client::connect(&[addr.to_string()])
                .await
                .unwrap();
            match client.put("again", "v", &Default::default(), None).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the client was not let back in: {e}"),
            }
        }
    })
    .await
    .expect("test timed out");
}
