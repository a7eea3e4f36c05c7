//! The Dynamo operator: reconciles `DynamoCluster` objects into StatefulSets and scales
//! them without losing data. See `docs/kubernetes.md`.
pub mod admin;
pub mod crd;
pub mod crdgen;
pub mod desired;
pub mod orchestrate;
pub mod scaling;
pub mod sim;
pub mod testing;
