//! The object store: every object as JSON keyed by (resource, namespace,
//! name), one global resourceVersion counter, uid/generation/creation
//! bookkeeping, and watch events (a bounded history plus a broadcast
//! channel for live subscribers). No I/O; the HTTP layer and the controller
//! are its only callers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::resources::ResourceType;
use super::status::ApiError;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The wire name, e.g. `ADDED`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in history and sent to subscribers.
#[derive(Clone, Debug)]
pub(crate) struct WatchEvent {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Kind of change.
    pub event_type: EventType,
    /// [`ResourceType::storage_key`] of the object.
    pub resource: String,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// The object after the change (for deletions: as it was, with the new rv).
    pub object: Value,
    /// The object before the change, for modifications.
    pub old: Option<Value>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchStart {
    /// Synthetic ADDED events for every existing object, then live events
    /// (resourceVersion "" or "0").
    Initial,
    /// Every event after this resourceVersion, then live events.
    After(u64),
}

type Key = (String, String, String);

/// A live subscription to store events.
pub(crate) type EventReceiver = broadcast::Receiver<Arc<WatchEvent>>;

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<WatchEvent>>,
    /// Events with rv <= floor may have been dropped from history.
    floor: u64,
}

/// The in-memory object store.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    history_cap: usize,
}

/// Now, as the API formats timestamps (`2026-01-02T03:04:05Z`).
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
    let ns = if rt.namespaced { ns } else { "" };
    (rt.storage_key(), ns.to_string(), name.to_string())
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

impl Store {
    /// An empty store keeping at most `history_cap` past events for watches.
    pub(crate) fn new(history_cap: usize) -> Self {
        let (events, _) = broadcast::channel(16 * 1024);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: 0,
            }),
            events,
            history_cap: history_cap.max(1),
        }
    }

    /// The latest resourceVersion.
    pub(crate) fn current_rv(&self) -> u64 {
        self.inner.lock().rv
    }

    /// One object.
    pub(crate) fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        self.inner.lock().objects.get(&key(rt, ns, name)).cloned()
    }

    /// Objects of a type, optionally in one namespace, sorted by namespace
    /// and name, with the resourceVersion the list is consistent with.
    pub(crate) fn list(&self, rt: &ResourceType, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.inner.lock();
        let resource = rt.storage_key();
        let items = inner
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == resource && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Creates an object in `ns` (ignored for cluster-scoped types). Fills
    /// in apiVersion, kind, uid, resourceVersion, generation and
    /// creationTimestamp; `generateName` gets a random suffix.
    pub(crate) fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let mut inner = self.inner.lock();
        let meta = obj
            .as_object_mut()
            .expect("object")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        let name = match meta["name"].as_str().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta["generateName"].as_str().filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        rt.kind
                    )))
                }
            },
        };
        let k = key(rt, ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::already_exists(
                &rt.group,
                &rt.plural,
                &rt.group_resource(),
                &name,
            ));
        }
        let rv = inner.rv + 1;
        let meta = meta.as_object_mut().expect("object");
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if dry_run {
            return Ok(obj);
        }
        inner.rv = rv;
        inner.objects.insert(k.clone(), obj.clone());
        self.emit(&mut inner, EventType::Added, k, obj.clone(), None);
        Ok(obj)
    }

    /// Changes an object under the store lock: `change` edits a copy; the
    /// result is stored with a new resourceVersion (and a new generation if
    /// anything outside metadata and status changed). A change that alters
    /// nothing stores nothing and returns the object as it is.
    pub(crate) fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        dry_run: bool,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock();
        let k = key(rt, ns, name);
        let old = inner.objects.get(&k).cloned().ok_or_else(|| {
            ApiError::not_found(&rt.group, &rt.plural, &rt.group_resource(), name)
        })?;
        let mut new = old.clone();
        change(&mut new)?;
        // Identity fields cannot change.
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        if without_rv(&new) == without_rv(&old) {
            return Ok(old);
        }
        if spec_part(&new) != spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        let rv = inner.rv + 1;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        if dry_run {
            return Ok(new);
        }
        inner.rv = rv;
        inner.objects.insert(k.clone(), new.clone());
        self.emit(&mut inner, EventType::Modified, k, new.clone(), Some(old));
        Ok(new)
    }

    /// Removes an object and returns it (with the deletion's resourceVersion).
    pub(crate) fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock();
        let k = key(rt, ns, name);
        let not_found = || ApiError::not_found(&rt.group, &rt.plural, &rt.group_resource(), name);
        if dry_run {
            return inner.objects.get(&k).cloned().ok_or_else(not_found);
        }
        let mut obj = inner.objects.remove(&k).ok_or_else(not_found)?;
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.emit(&mut inner, EventType::Deleted, k, obj.clone(), None);
        Ok(obj)
    }

    /// Every object (of any type) whose ownerReferences name `owner_uid`,
    /// as (storage key, namespace, object).
    pub(crate) fn dependents(&self, owner_uid: &str) -> Vec<(String, String, Value)> {
        let inner = self.inner.lock();
        inner
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(owner_uid)))
            })
            .map(|((r, ns, _), v)| (r.clone(), ns.clone(), v.clone()))
            .collect()
    }

    /// Every namespaced object in `ns`, as (storage key, object).
    pub(crate) fn in_namespace(&self, ns: &str) -> Vec<(String, Value)> {
        let inner = self.inner.lock();
        inner
            .objects
            .iter()
            .filter(|((_, n, _), _)| n == ns)
            .map(|((r, _, _), v)| (r.clone(), v.clone()))
            .collect()
    }

    /// Live events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.events.subscribe()
    }

    /// Events of `resource` (a storage key) from `start`, atomically with a
    /// live subscription so nothing is missed or repeated. 410 Gone when
    /// `start` is older than the kept history.
    pub(crate) fn watch(
        &self,
        resource: &str,
        start: WatchStart,
    ) -> Result<(Vec<Arc<WatchEvent>>, EventReceiver), ApiError> {
        let inner = self.inner.lock();
        let rx = self.events.subscribe();
        let backlog = match start {
            WatchStart::Initial => inner
                .objects
                .iter()
                .filter(|((r, _, _), _)| r == resource)
                .map(|((r, ns, _), v)| {
                    Arc::new(WatchEvent {
                        rv: inner.rv,
                        event_type: EventType::Added,
                        resource: r.clone(),
                        namespace: ns.clone(),
                        object: v.clone(),
                        old: None,
                    })
                })
                .collect(),
            WatchStart::After(rv) if rv < inner.floor => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    inner.floor + 1
                )))
            }
            WatchStart::After(rv) => inner
                .history
                .iter()
                .filter(|e| e.rv > rv && e.resource == resource)
                .cloned()
                .collect(),
        };
        Ok((backlog, rx))
    }

    fn emit(
        &self,
        inner: &mut Inner,
        event_type: EventType,
        k: Key,
        object: Value,
        old: Option<Value>,
    ) {
        let (resource, namespace, _) = k;
        let event = Arc::new(WatchEvent {
            rv: inner.rv,
            event_type,
            resource,
            namespace,
            object,
            old,
        });
        inner.history.push_back(event.clone());
        while inner.history.len() > self.history_cap {
            if let Some(dropped) = inner.history.pop_front() {
                inner.floor = dropped.rv;
            }
        }
        // No receivers is fine.
        let _ = self.events.send(event);
    }
}

/// 409 Conflict unless `expected` is absent, empty or the current version.
pub(crate) fn check_rv(
    rt: &ResourceType,
    name: &str,
    current: &Value,
    expected: Option<&str>,
) -> Result<(), ApiError> {
    match expected {
        Some(rv)
            if !rv.is_empty() && current["metadata"]["resourceVersion"].as_str() != Some(rv) =>
        {
            Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                &rt.group_resource(),
                name,
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtin_types;

    fn replace(
        store: &Store,
        rt: &ResourceType,
        name: &str,
        obj: Value,
        rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        store.update(rt, "default", name, false, |current| {
            check_rv(rt, name, current, rv)?;
            *current = obj;
            Ok(())
        })
    }

    fn rt(plural: &str) -> ResourceType {
        builtin_types()
            .into_iter()
            .find(|t| t.plural == plural)
            .unwrap()
    }

    #[test]
    fn create_get_update_delete_with_versions_and_events() {
        let store = Store::new(100);
        let cm = rt("configmaps");
        let mut rx = store.subscribe();
        let created = store
            .create(
                &cm,
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                false,
            )
            .unwrap();
        assert_eq!(created["kind"], "ConfigMap");
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);
        let rv1 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(rx.try_recv().unwrap().event_type, EventType::Added);

        let err = store
            .create(&cm, "default", json!({"metadata": {"name": "a"}}), false)
            .unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));

        let updated = replace(
            &store,
            &cm,
            "a",
            json!({"metadata": {"name": "a"}, "data": {"k": "w"}}),
            Some(&rv1),
        )
        .unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        let stale = replace(
            &store,
            &cm,
            "a",
            json!({"metadata": {"name": "a"}}),
            Some(&rv1),
        );
        assert_eq!(stale.unwrap_err().reason, "Conflict");

        // A no-op change stores nothing.
        let rv_before = store.current_rv();
        store
            .update(&cm, "default", "a", false, |_| Ok(()))
            .unwrap();
        assert_eq!(store.current_rv(), rv_before);

        // History replays from an old resourceVersion.
        let (backlog, _) = store
            .watch(&cm.storage_key(), WatchStart::After(rv1.parse().unwrap()))
            .unwrap();
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].event_type, EventType::Modified);

        let deleted = store.delete(&cm, "default", "a", false).unwrap();
        assert_eq!(deleted["data"]["k"], "w");
        assert!(store.get(&cm, "default", "a").is_none());
        assert_eq!(
            store.delete(&cm, "default", "a", false).unwrap_err().code,
            404
        );
    }

    #[test]
    fn generate_name_dry_run_and_gone() {
        let store = Store::new(2);
        let cm = rt("configmaps");
        let dry = store
            .create(&cm, "ns", json!({"metadata": {"generateName": "x-"}}), true)
            .unwrap();
        assert!(dry["metadata"]["name"].as_str().unwrap().starts_with("x-"));
        assert!(store.list(&cm, None).0.is_empty());
        for i in 0..4 {
            store
                .create(
                    &cm,
                    "ns",
                    json!({"metadata": {"name": format!("c{i}")}}),
                    false,
                )
                .unwrap();
        }
        assert_eq!(
            store
                .watch(&cm.storage_key(), WatchStart::After(1))
                .unwrap_err()
                .code,
            410
        );
        let (initial, _) = store.watch(&cm.storage_key(), WatchStart::Initial).unwrap();
        assert_eq!(initial.len(), 4);
        assert_eq!(store.list(&cm, Some("ns")).0.len(), 4);
        assert_eq!(store.list(&cm, Some("other")).0.len(), 0);
    }
}
