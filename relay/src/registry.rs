//! The registry of live tunnels: node ID → connections, cluster ID → nodes.
//!
//! Shape borrowed from iroh-relay's client registry: every connection gets its own
//! [`ConnId`], and removal names both node and connection, so the late close of an old
//! connection can never remove a newer one for the same node.
//!
//! Request-path lookups take no global lock: the maps are sharded ([`DashMap`]) and each
//! node's connection list and each cluster's node list is an immutable snapshot behind an
//! [`ArcSwap`], replaced whole on the (rare) connect and disconnect. Writers serialise on
//! one mutex so that "last connection of a node leaves" and "a new one arrives" can never
//! interleave into an orphaned entry.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tether_proto::{Id, Identity};

/// Identifies one tunnel connection for its whole life; never reused.
pub type ConnId = u64;

/// One live tunnel connection. `T` is the transport handle (the HTTP/3 sender in the
/// relay; anything in unit tests).
pub struct Tunnel<T> {
    pub conn_id: ConnId,
    pub identity: Identity,
    pub handle: T,
    open_streams: AtomicUsize,
    total_streams: AtomicU64,
    draining: AtomicBool,
}

impl<T> Tunnel<T> {
    /// Stops new requests from picking this connection (requests in flight go on).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Load for balancing; `None` when the connection takes no new requests.
    fn load(&self) -> Option<usize> {
        (!self.is_draining()).then(|| self.open_streams())
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    pub fn total_streams(&self) -> u64 {
        self.total_streams.load(Ordering::Relaxed)
    }
}

/// A request's claim on a tunnel: counts as one outstanding stream until dropped, which
/// is what least-outstanding balancing reads.
pub struct Lease<T> {
    tunnel: Arc<Tunnel<T>>,
}

impl<T> Lease<T> {
    fn new(tunnel: Arc<Tunnel<T>>) -> Self {
        tunnel.open_streams.fetch_add(1, Ordering::Relaxed);
        tunnel.total_streams.fetch_add(1, Ordering::Relaxed);
        Lease { tunnel }
    }

    pub fn tunnel(&self) -> &Arc<Tunnel<T>> {
        &self.tunnel
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        self.tunnel.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every connection of one node.
pub struct Node<T> {
    pub id: Id,
    pub cluster: Id,
    tunnels: ArcSwap<Vec<Arc<Tunnel<T>>>>,
    rr: AtomicUsize,
}

impl<T> Node<T> {
    pub fn tunnels(&self) -> Arc<Vec<Arc<Tunnel<T>>>> {
        self.tunnels.load_full()
    }

    /// Streams in flight over the node's connections that take requests; `None` when
    /// none does.
    fn load(&self) -> Option<usize> {
        self.tunnels
            .load()
            .iter()
            .filter_map(|t| t.load())
            .reduce(|a, b| a + b)
    }

    fn pick(&self) -> Option<Lease<T>> {
        let tunnels = self.tunnels.load();
        let i = least_loaded(&tunnels, &self.rr, |t| t.load())?;
        Some(Lease::new(tunnels[i].clone()))
    }
}

struct Cluster<T> {
    nodes: ArcSwap<Vec<Arc<Node<T>>>>,
    rr: AtomicUsize,
}

/// Index of the available item with the fewest outstanding streams (`load` is `None`
/// for an unavailable one); ties go to the first one at or after a rotating start, which
/// makes equal loads round-robin.
fn least_loaded<I>(
    items: &[I],
    rr: &AtomicUsize,
    load: impl Fn(&I) -> Option<usize>,
) -> Option<usize> {
    let n = items.len();
    if n == 0 {
        return None;
    }
    let start = if n == 1 {
        0
    } else {
        rr.fetch_add(1, Ordering::Relaxed) % n
    };
    let mut best: Option<(usize, usize)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let Some(l) = load(&items[i]) else { continue };
        if best.is_none_or(|(b, _)| l < b) {
            best = Some((l, i));
            if l == 0 {
                break;
            }
        }
    }
    best.map(|(_, i)| i)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("node {node} is already connected as a member of cluster {existing}, not {claimed}")]
    ClusterConflict { node: Id, existing: Id, claimed: Id },
}

/// The registry; cheap to clone (shared).
pub struct Registry<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    nodes: DashMap<Id, Arc<Node<T>>>,
    clusters: DashMap<Id, Arc<Cluster<T>>>,
    writer: Mutex<()>,
    next_conn_id: AtomicU64,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            inner: Arc::new(Inner {
                nodes: DashMap::new(),
                clusters: DashMap::new(),
                writer: Mutex::new(()),
                next_conn_id: AtomicU64::new(1),
            }),
        }
    }
}

impl<T> Registry<T> {
    /// Adds a live connection for `identity` and returns it with its new [`ConnId`].
    pub fn register(&self, identity: Identity, handle: T) -> Result<Arc<Tunnel<T>>, RegisterError> {
        let _w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = self.inner.nodes.get(&identity.node) {
            if node.cluster != identity.cluster {
                return Err(RegisterError::ClusterConflict {
                    node: identity.node.clone(),
                    existing: node.cluster.clone(),
                    claimed: identity.cluster.clone(),
                });
            }
        }
        let conn_id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let tunnel = Arc::new(Tunnel {
            conn_id,
            identity: identity.clone(),
            handle,
            open_streams: AtomicUsize::new(0),
            total_streams: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        });
        let node = self
            .inner
            .nodes
            .entry(identity.node.clone())
            .or_insert_with(|| {
                let node = Arc::new(Node {
                    id: identity.node.clone(),
                    cluster: identity.cluster.clone(),
                    tunnels: ArcSwap::from_pointee(Vec::new()),
                    rr: AtomicUsize::new(0),
                });
                let cluster = self
                    .inner
                    .clusters
                    .entry(identity.cluster.clone())
                    .or_insert_with(|| {
                        Arc::new(Cluster {
                            nodes: ArcSwap::from_pointee(Vec::new()),
                            rr: AtomicUsize::new(0),
                        })
                    })
                    .clone();
                cluster.nodes.rcu(|nodes| {
                    let mut nodes = Vec::clone(nodes);
                    nodes.push(node.clone());
                    nodes
                });
                node
            })
            .clone();
        node.tunnels.rcu(|tunnels| {
            let mut tunnels = Vec::clone(tunnels);
            tunnels.push(tunnel.clone());
            tunnels
        });
        Ok(tunnel)
    }

    /// Removes connection `conn_id` of `node`. Returns false (and changes nothing) when that
    /// connection is not registered, e.g. a stale close after a reconnect.
    pub fn unregister(&self, node: &Id, conn_id: ConnId) -> bool {
        let _w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = self.inner.nodes.get(node).map(|n| n.clone()) else {
            return false;
        };
        let before = entry.tunnels.load();
        if !before.iter().any(|t| t.conn_id == conn_id) {
            return false;
        }
        let after: Vec<_> = before
            .iter()
            .filter(|t| t.conn_id != conn_id)
            .cloned()
            .collect();
        let empty = after.is_empty();
        entry.tunnels.store(Arc::new(after));
        if empty {
            self.inner.nodes.remove(node);
            if let Some(cluster) = self.inner.clusters.get(&entry.cluster).map(|c| c.clone()) {
                let rest: Vec<_> = cluster
                    .nodes
                    .load()
                    .iter()
                    .filter(|n| n.id != *node)
                    .cloned()
                    .collect();
                if rest.is_empty() {
                    self.inner.clusters.remove(&entry.cluster);
                } else {
                    cluster.nodes.store(Arc::new(rest));
                }
            }
        }
        true
    }

    /// A lease on the least-busy connection of `node`.
    pub fn pick_node(&self, node: &str) -> Option<Lease<T>> {
        let node = self.inner.nodes.get(node)?.clone();
        node.pick()
    }

    /// A lease on the least-busy connection of the least-busy node of `cluster`.
    pub fn pick_cluster(&self, cluster: &str) -> Option<Lease<T>> {
        let cluster = self.inner.clusters.get(cluster)?.clone();
        let nodes = cluster.nodes.load();
        let i = least_loaded(&nodes, &cluster.rr, |n| n.load())?;
        nodes[i].pick()
    }

    /// Every node, sorted by cluster then node ID (for the admin API).
    pub fn nodes(&self) -> Vec<Arc<Node<T>>> {
        let mut v: Vec<_> = self.inner.nodes.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| (&a.cluster, &a.id).cmp(&(&b.cluster, &b.id)));
        v
    }

    /// Number of live tunnel connections.
    pub fn connection_count(&self) -> usize {
        self.inner
            .nodes
            .iter()
            .map(|n| n.tunnels.load().len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(cluster: &str, node: &str) -> Identity {
        Identity::new(
            "tether.local",
            Id::new(cluster).unwrap(),
            Id::new(node).unwrap(),
        )
        .unwrap()
    }
    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn stale_close_never_removes_a_newer_connection() {
        let r = Registry::default();
        let old = r.register(ident("c", "a"), ()).unwrap();
        let new = r.register(ident("c", "a"), ()).unwrap();
        assert_ne!(old.conn_id, new.conn_id);
        assert!(r.unregister(&id("a"), old.conn_id));
        assert!(
            !r.unregister(&id("a"), old.conn_id),
            "second close is a no-op"
        );
        assert_eq!(r.pick_node("a").unwrap().tunnel().conn_id, new.conn_id);
        assert!(r.unregister(&id("a"), new.conn_id));
        assert!(r.pick_node("a").is_none());
        assert!(r.pick_cluster("c").is_none());
        assert_eq!(r.connection_count(), 0);
    }

    #[test]
    fn cluster_picks_spread_evenly_when_idle() {
        let r = Registry::default();
        r.register(ident("c", "a"), "a").unwrap();
        r.register(ident("c", "b"), "b").unwrap();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            let lease = r.pick_cluster("c").unwrap();
            *counts.entry(lease.tunnel().handle).or_insert(0) += 1;
        }
        assert_eq!(counts["a"], 50);
        assert_eq!(counts["b"], 50);
    }

    #[test]
    fn picks_prefer_the_least_outstanding() {
        let r = Registry::default();
        r.register(ident("c", "a"), "a").unwrap();
        r.register(ident("c", "b"), "b").unwrap();
        let held: Vec<_> = (0..2).map(|_| r.pick_node("a").unwrap()).collect();
        for _ in 0..10 {
            assert_eq!(r.pick_cluster("c").unwrap().tunnel().handle, "b");
        }
        drop(held);
        let a = r.pick_cluster("c").unwrap();
        let b = r.pick_cluster("c").unwrap();
        assert_ne!(a.tunnel().handle, b.tunnel().handle);
    }

    #[test]
    fn connections_of_one_node_are_balanced_and_leases_count() {
        let r = Registry::default();
        let t1 = r.register(ident("c", "a"), 1).unwrap();
        let t2 = r.register(ident("c", "a"), 2).unwrap();
        let l1 = r.pick_node("a").unwrap();
        let l2 = r.pick_node("a").unwrap();
        assert_ne!(l1.tunnel().conn_id, l2.tunnel().conn_id);
        assert_eq!(t1.open_streams() + t2.open_streams(), 2);
        drop((l1, l2));
        assert_eq!(t1.open_streams() + t2.open_streams(), 0);
        assert_eq!(t1.total_streams() + t2.total_streams(), 2);
    }

    #[test]
    fn draining_connections_and_nodes_take_no_new_requests() {
        let r = Registry::default();
        let a1 = r.register(ident("c", "a"), "a1").unwrap();
        let a2 = r.register(ident("c", "a"), "a2").unwrap();
        r.register(ident("c", "b"), "b").unwrap();
        a1.set_draining();
        for _ in 0..10 {
            assert_eq!(r.pick_node("a").unwrap().tunnel().handle, "a2");
        }
        a2.set_draining();
        assert!(
            r.pick_node("a").is_none(),
            "a fully draining node is not a target"
        );
        for _ in 0..10 {
            assert_eq!(r.pick_cluster("c").unwrap().tunnel().handle, "b");
        }
    }

    #[test]
    fn a_node_cannot_claim_two_clusters() {
        let r = Registry::default();
        r.register(ident("c", "a"), ()).unwrap();
        assert!(matches!(
            r.register(ident("d", "a"), ()),
            Err(RegisterError::ClusterConflict { .. })
        ));
        assert!(r.pick_cluster("d").is_none());
    }
}
