//! Answering a peer's questions about this node's Merkle trees.

use std::collections::BTreeSet;

use crate::node::Node;
use crate::storage::StorageError;

use super::{TreeAnswer, TreeQuery};

/// Most nodes, partitions or leaves one query may name.
pub const MAX_QUERY_ITEMS: usize = 4096;

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("bad tree query: {0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Answers `query` from this node's trees (and, for leaf keys, one scan of the
/// partition: a blocking call).
pub fn answer(node: &Node, query: TreeQuery) -> Result<TreeAnswer, AnswerError> {
    let trees = node.store.trees();
    let q = node.store.partitions();
    let check = |p: u32, n: usize| {
        if p >= q {
            return Err(AnswerError::Invalid(format!(
                "partition {p} of a cluster of {q}"
            )));
        }
        if n > MAX_QUERY_ITEMS {
            return Err(AnswerError::Invalid(format!(
                "{n} items asked; at most {MAX_QUERY_ITEMS}"
            )));
        }
        Ok(())
    };
    match query {
        TreeQuery::Roots(partitions) => {
            check(0, partitions.len())?;
            let roots = partitions
                .iter()
                .map(|&p| {
                    trees
                        .root(p)
                        .ok_or_else(|| AnswerError::Invalid(format!("partition {p} of {q}")))
                })
                .collect::<Result<_, _>>()?;
            Ok(TreeAnswer::Hashes(roots))
        }
        TreeQuery::Children {
            partition,
            level,
            nodes,
        } => {
            check(partition, nodes.len())?;
            trees
                .children(partition, level, &nodes)
                .map(TreeAnswer::Hashes)
                .ok_or_else(|| {
                    AnswerError::Invalid(format!(
                        "level {level} of partition {partition}'s tree has no such inner nodes"
                    ))
                })
        }
        TreeQuery::LeafKeys { partition, leaves } => {
            check(partition, leaves.len())?;
            let leaves: BTreeSet<usize> = leaves.into_iter().map(|l| l as usize).collect();
            Ok(TreeAnswer::Keys(node.store.leaf_items(partition, &leaves)?))
        }
    }
}
