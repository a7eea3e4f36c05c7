//! One test suite, run against every engine.

use super::memory::MemoryEngine;
use super::rocks::RocksEngine;
use super::{Batch, Cf, Engine};

fn put(e: &dyn Engine, cf: Cf, k: &[u8], v: &[u8]) {
    let mut b = Batch::default();
    b.put(cf, k.to_vec(), v.to_vec());
    e.write(&b, false).unwrap();
}

fn get_put_delete(e: &dyn Engine) {
    assert_eq!(e.get(Cf::Data, b"k").unwrap(), None);
    put(e, Cf::Data, b"k", b"v1");
    assert_eq!(e.get(Cf::Data, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        e.get(Cf::Hints, b"k").unwrap(),
        None,
        "column families are separate"
    );
    put(e, Cf::Data, b"k", b"v2");
    assert_eq!(e.get(Cf::Data, b"k").unwrap().as_deref(), Some(&b"v2"[..]));
    let mut b = Batch::default();
    b.delete(Cf::Data, b"k".to_vec());
    e.write(&b, true).unwrap();
    assert_eq!(e.get(Cf::Data, b"k").unwrap(), None);
}

fn batches_are_atomic_and_ordered(e: &dyn Engine) {
    let mut b = Batch::default();
    b.put(Cf::Meta, b"a".to_vec(), b"1".to_vec());
    b.put(Cf::Meta, b"a".to_vec(), b"2".to_vec());
    b.put(Cf::Hints, b"h".to_vec(), b"x".to_vec());
    e.write(&b, true).unwrap();
    assert_eq!(e.get(Cf::Meta, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(e.get(Cf::Hints, b"h").unwrap().as_deref(), Some(&b"x"[..]));
}

fn scan_respects_prefix_start_and_limit(e: &dyn Engine) {
    for k in [&b"a1"[..], b"b1", b"b2", b"b3", b"c1"] {
        put(e, Cf::Hints, k, k);
    }
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(e.scan(Cf::Hints, b"b", b"", 10).unwrap()),
        [b"b1", b"b2", b"b3"]
    );
    assert_eq!(
        keys(e.scan(Cf::Hints, b"b", b"b2", 10).unwrap()),
        [b"b2", b"b3"]
    );
    assert_eq!(
        keys(e.scan(Cf::Hints, b"b", b"", 2).unwrap()),
        [b"b1", b"b2"]
    );
    assert!(e.scan(Cf::Data, b"b", b"", 10).unwrap().is_empty());
}

/// Data keys come back in key order from a scan of one partition's range, however they
/// were written (the RocksDB engine hashes the data memtable by key).
fn data_scan_is_in_key_order(e: &dyn Engine) {
    let key = |p: u32, k: u32| {
        let mut v = p.to_be_bytes().to_vec();
        v.extend_from_slice(format!("key-{k:03}").as_bytes());
        v
    };
    // Written in a scattered order, over three partitions, some twice.
    for i in 0..400u32 {
        let k = (i * 7919) % 100;
        put(e, Cf::Data, &key(i % 3, k), format!("{i}").as_bytes());
    }
    let prefix = 1u32.to_be_bytes();
    let got: Vec<Vec<u8>> = e
        .scan(Cf::Data, &prefix, &key(1, 50), 1000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let want: Vec<Vec<u8>> = (50..100).map(|k| key(1, k)).collect();
    assert_eq!(
        got, want,
        "partition 1 from key 50, in order, each key once"
    );
    assert_eq!(e.scan(Cf::Data, &prefix, b"", 1000).unwrap().len(), 100);
    // A prefix longer than the partition, and a start past the partition's keys.
    let mut longer = prefix.to_vec();
    longer.extend_from_slice(b"key-09");
    let got: Vec<Vec<u8>> = e
        .scan(Cf::Data, &longer, b"", 1000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, (90..100).map(|k| key(1, k)).collect::<Vec<_>>());
    assert!(e
        .scan(Cf::Data, &prefix, &key(1, 999), 1000)
        .unwrap()
        .is_empty());
    // The last partition number, whose range ends past every 4-byte prefix.
    put(e, Cf::Data, &key(u32::MAX, 1), b"last");
    assert_eq!(
        e.scan(Cf::Data, &u32::MAX.to_be_bytes(), b"", 10)
            .unwrap()
            .len(),
        1
    );
    // Dropping partition 1 by its range leaves partitions 0 and 2, and keys put again
    // after it are kept.
    let mut b = Batch::default();
    b.delete_range(Cf::Data, prefix.to_vec(), 2u32.to_be_bytes().to_vec());
    e.write(&b, false).unwrap();
    assert!(e.scan(Cf::Data, &prefix, b"", 1000).unwrap().is_empty());
    for p in [0u32, 2] {
        assert_eq!(
            e.scan(Cf::Data, &p.to_be_bytes(), b"", 1000).unwrap().len(),
            100
        );
    }
    put(e, Cf::Data, &key(1, 7), b"again");
    assert_eq!(
        e.get(Cf::Data, &key(1, 7)).unwrap(),
        Some(b"again".to_vec())
    );
    assert_eq!(e.scan(Cf::Data, &prefix, b"", 1000).unwrap().len(), 1);
}

fn range_delete(e: &dyn Engine) {
    for k in [&b"p1a"[..], b"p1b", b"p2a"] {
        put(e, Cf::Data, k, b"v");
    }
    let mut b = Batch::default();
    b.delete_range(Cf::Data, b"p1".to_vec(), b"p2".to_vec());
    e.write(&b, false).unwrap();
    assert_eq!(e.get(Cf::Data, b"p1a").unwrap(), None);
    assert_eq!(e.get(Cf::Data, b"p1b").unwrap(), None);
    assert!(e.get(Cf::Data, b"p2a").unwrap().is_some());
}

/// Keys put again after a range delete are there, whatever their size and whether the
/// engine held them just before (an in-place update must not revive a covered entry).
fn puts_after_a_range_delete_are_kept(e: &dyn Engine) {
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("p1k{i:02}").into_bytes()).collect();
    for round in 0..3u8 {
        let mut b = Batch::default();
        for k in &keys {
            // The same size every round, and a put of a range key in the deleting batch.
            b.put(Cf::Data, k.clone(), vec![b'a' + round; 8]);
        }
        e.write(&b, false).unwrap();
        for k in &keys {
            assert_eq!(
                e.get(Cf::Data, k).unwrap(),
                Some(vec![b'a' + round; 8]),
                "round {round}"
            );
        }
        let kept = usize::from(round > 0); // "p1kept", from the round before
        assert_eq!(
            e.scan(Cf::Data, b"p1", b"p1", 100).unwrap().len(),
            keys.len() + kept
        );
        let mut b = Batch::default();
        b.put(Cf::Data, b"p1zz".to_vec(), b"x".to_vec());
        b.delete_range(Cf::Data, b"p1".to_vec(), b"p2".to_vec());
        b.put(Cf::Data, b"p1kept".to_vec(), b"y".to_vec());
        e.write(&b, false).unwrap();
        let left: Vec<Vec<u8>> = e
            .scan(Cf::Data, b"p1", b"p1", 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![b"p1kept".to_vec()], "round {round}");
        assert_eq!(e.get(Cf::Data, b"p1zz").unwrap(), None);
    }
}

fn run_all(make: &dyn Fn() -> Box<dyn Engine>) {
    get_put_delete(&*make());
    batches_are_atomic_and_ordered(&*make());
    scan_respects_prefix_start_and_limit(&*make());
    data_scan_is_in_key_order(&*make());
    range_delete(&*make());
    puts_after_a_range_delete_are_kept(&*make());
}

#[test]
fn memory_engine_conforms() {
    run_all(&|| Box::new(MemoryEngine::new()));
}

#[test]
fn rocks_engine_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    run_all(&|| {
        let d = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(d.path(), 8 << 20).unwrap();
        dirs.borrow_mut().push(d);
        Box::new(e)
    });
}

#[test]
fn rocks_engine_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    {
        let e = RocksEngine::open(d.path(), 8 << 20).unwrap();
        put(&e, Cf::Data, b"k", b"v");
        put(&e, Cf::Meta, b"m", b"1");
    }
    let e = RocksEngine::open(d.path(), 8 << 20).unwrap();
    assert_eq!(e.get(Cf::Data, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(e.get(Cf::Meta, b"m").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn memory_engine_crash_drops_only_unsynced_writes() {
    let e = MemoryEngine::new();
    put(&e, Cf::Data, b"synced", b"1");
    e.sync().unwrap();
    put(&e, Cf::Data, b"unsynced", b"2");
    let mut b = Batch::default();
    b.put(Cf::Data, b"synced-write".to_vec(), b"3".to_vec());
    e.write(&b, true).unwrap();
    put(&e, Cf::Data, b"lost", b"4");
    e.crash();
    assert!(e.get(Cf::Data, b"synced").unwrap().is_some());
    assert!(
        e.get(Cf::Data, b"unsynced").unwrap().is_some(),
        "a synced write syncs earlier ones"
    );
    assert!(e.get(Cf::Data, b"synced-write").unwrap().is_some());
    assert_eq!(e.get(Cf::Data, b"lost").unwrap(), None);
}
