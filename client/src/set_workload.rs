//! The set workload that the tests, the simulator and the nemesis share: a key holds a
//! set of elements, each value is its elements joined by commas, and a reader merges
//! siblings by taking the union (what Dynamo's shopping cart does). An element that a
//! client saw acknowledged must be in every later read's union.

use std::collections::BTreeSet;

use crate::proto::GetResponse;

/// The live (not deleted) siblings' values, as text, sorted.
pub fn values(r: &GetResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .siblings
        .iter()
        .filter(|s| !s.tombstone)
        .map(|s| String::from_utf8_lossy(&s.value).into_owned())
        .collect();
    v.sort();
    v
}

/// The union of the elements of every live (not deleted) sibling of `r`.
pub fn elements(r: &GetResponse) -> BTreeSet<String> {
    elements_of(r.siblings.iter().filter(|s| !s.tombstone).map(|s| &s.value))
}

/// The union of the comma-separated elements of `values`.
pub fn elements_of<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> BTreeSet<String> {
    let texts: Vec<String> = values
        .into_iter()
        .map(|v| String::from_utf8_lossy(v.as_ref()).into_owned())
        .collect();
    // Sorted and deduplicated first, then built in one go: sets of thousands of elements
    // in a few siblings each holding most of them (the simulator parses one per read).
    let mut all: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|e| !e.is_empty())
        .collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Sibling;

    #[test]
    fn the_union_skips_tombstones_and_empty_elements() {
        let sibling = |value: &str, tombstone| Sibling {
            value: value.as_bytes().to_vec(),
            tombstone,
            ..Sibling::default()
        };
        let r = GetResponse {
            siblings: vec![
                sibling("a,b", false),
                sibling("b,,c", false),
                sibling("d", true),
            ],
            ..GetResponse::default()
        };
        let want: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(elements(&r), want);
        assert_eq!(values(&r), ["a,b", "b,,c"]);
    }
}
