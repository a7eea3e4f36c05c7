//! The Dynamo operator: reconciles `DynamoCluster` objects into StatefulSets and scales
//! them without losing data. See `docs/kubernetes.md`.
//!
//! Pure parts: [`crd`], [`validate`], [`desired`], [`scaling`], [`status`]. Drivers:
//! [`orchestrate`] (the scaling core over two interfaces), [`reconcile`] (the controller).
//! Sides: [`kube_workloads`] (Kubernetes), [`admin`] (the nodes), [`certificates`]
//! (the TLS Secrets). Test worlds: [`sim`].
pub mod admin;
pub mod certificates;
pub mod crd;
pub mod crdgen;
pub mod desired;
pub mod fake_api;
pub mod http;
pub mod kube_workloads;
pub mod leader;
pub mod metrics;
pub mod orchestrate;
pub mod reconcile;
pub mod scaling;
pub mod sim;
pub mod status;
pub mod testing;
pub mod validate;
