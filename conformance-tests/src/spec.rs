//! Validation of responses against the Matrix specification's own schemas.
//!
//! The OpenAPI 3.1 definitions of the Client-Server API (`data/api/client-server/*.yaml`) and the
//! Server-Server API (`data/api/server-server/*.yaml`), and the event JSON schemas (`data/event-schemas/schema/*.yaml`) are loaded at run time from the spec
//! checkout. Every `$ref` (same file, other files, `definitions/` subfolders, `../../event-schemas`)
//! is inlined before compilation, so the validator never fetches anything. Validators are compiled
//! lazily and cached per process.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value, json};

/// Where the spec lives: `$MATRIX_SPEC_DIR`, else `<repo>/../shared/matrix-spec`.
pub fn spec_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MATRIX_SPEC_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/matrix-spec")
}

/// One operation of the OpenAPI definitions: method + full path template.
struct Operation {
    method: String,
    /// Full path split in segments; `None` is a `{placeholder}`.
    segments: Vec<Option<String>>,
    file: PathBuf,
    /// JSON pointer of the operation object inside `file`.
    pointer: String,
}

pub struct Spec {
    root: PathBuf,
    docs: Mutex<HashMap<PathBuf, Arc<Value>>>,
    operations: Vec<Operation>,
    compiled: Mutex<HashMap<String, Option<Arc<Validator>>>>,
}

/// A schema violation: where in the document, and what is wrong.
#[derive(Debug, Clone)]
pub struct Violation {
    pub instance_path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.instance_path.is_empty() {
            "/"
        } else {
            &self.instance_path
        };
        write!(f, "at {path}: {}", self.message)
    }
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn yaml_to_json(v: serde_yaml::Value) -> Value {
    match v {
        serde_yaml::Value::Null => Value::Null,
        serde_yaml::Value::Bool(b) => Value::Bool(b),
        serde_yaml::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_yaml::Value::String(s) => Value::String(s),
        serde_yaml::Value::Sequence(seq) => Value::Array(seq.into_iter().map(yaml_to_json).collect()),
        serde_yaml::Value::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    serde_yaml::Value::String(s) => s,
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::Bool(b) => b.to_string(),
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                out.insert(key, yaml_to_json(v));
            }
            Value::Object(out)
        }
        serde_yaml::Value::Tagged(t) => yaml_to_json(t.value),
    }
}

fn load_yaml(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read spec file {}: {e}", path.display()));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("cannot parse spec file {}: {e}", path.display()));
    yaml_to_json(yaml)
}

/// Keys that may sit beside a `$ref` without changing what it validates.
const ANNOTATION_KEYS: &[&str] = &["description", "title", "examples", "example", "summary"];

impl Spec {
    /// The process-wide spec, loaded on first use.
    pub fn get() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| Spec::load(&spec_dir()))
    }

    pub fn load(root: &Path) -> Spec {
        let root = fs::canonicalize(root).unwrap_or_else(|e| {
            panic!(
                "Matrix spec not found at {} ({e}); set MATRIX_SPEC_DIR to a matrix-spec checkout",
                root.display()
            )
        });
        let mut spec = Spec {
            root,
            docs: Mutex::new(HashMap::new()),
            operations: Vec::new(),
            compiled: Mutex::new(HashMap::new()),
        };
        // Both APIs' paths start with their own prefix (`/_matrix/client`, `/_matrix/federation`,
        // `/_matrix/key`, ...), so one operation table serves both.
        let mut files: Vec<PathBuf> = Vec::new();
        for api in ["client-server", "server-server"] {
            let dir = spec.root.join("data/api").join(api);
            let mut api_files: Vec<PathBuf> = fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            api_files.sort();
            files.extend(api_files);
        }
        for file in files {
            let file = fs::canonicalize(&file).expect("canonical spec path");
            let doc = spec.doc(&file);
            let bases: Vec<String> = doc
                .pointer("/servers")
                .and_then(Value::as_array)
                .map(|servers| {
                    servers
                        .iter()
                        .filter_map(|s| {
                            s.pointer("/variables/basePath/default")
                                .and_then(Value::as_str)
                                .map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
                continue;
            };
            for (path, item) in paths {
                let Some(item) = item.as_object() else {
                    continue;
                };
                for (method, _) in item.iter() {
                    if !["get", "put", "post", "delete", "options", "head", "patch"]
                        .contains(&method.as_str())
                    {
                        continue;
                    }
                    for base in &bases {
                        let full = format!("{base}{path}");
                        let segments = full
                            .split('/')
                            .map(|seg| {
                                if seg.starts_with('{') && seg.ends_with('}') {
                                    None
                                } else {
                                    Some(seg.to_string())
                                }
                            })
                            .collect();
                        spec.operations.push(Operation {
                            method: method.to_uppercase(),
                            segments,
                            file: file.clone(),
                            pointer: format!("/paths/{}/{}", escape_pointer(path), method),
                        });
                    }
                }
            }
        }
        spec
    }

    fn doc(&self, path: &Path) -> Arc<Value> {
        let mut docs = self.docs.lock().unwrap();
        docs.entry(path.to_path_buf())
            .or_insert_with(|| Arc::new(load_yaml(path)))
            .clone()
    }

    /// Inline every `$ref` in `value` (which lives in `file`). Cycles become `{}` (accept anything).
    fn inline(&self, value: &Value, file: &Path, stack: &mut Vec<String>) -> Value {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    let (file_part, pointer) = match reference.split_once('#') {
                        Some((f, p)) => (f, p),
                        None => (reference.as_str(), ""),
                    };
                    let target_file = if file_part.is_empty() {
                        file.to_path_buf()
                    } else {
                        let joined = file.parent().unwrap().join(file_part);
                        fs::canonicalize(&joined)
                            .unwrap_or_else(|e| panic!("broken $ref {reference} in {}: {e}", file.display()))
                    };
                    let key = format!("{}#{pointer}", target_file.display());
                    let resolved = if stack.contains(&key) {
                        json!({})
                    } else {
                        let doc = self.doc(&target_file);
                        let target = doc
                            .pointer(pointer)
                            .unwrap_or_else(|| panic!("broken $ref {reference} in {}", file.display()))
                            .clone();
                        stack.push(key);
                        let r = self.inline(&target, &target_file, stack);
                        stack.pop();
                        r
                    };
                    let extra: Map<String, Value> = map
                        .iter()
                        .filter(|(k, _)| {
                            k.as_str() != "$ref"
                                && !ANNOTATION_KEYS.contains(&k.as_str())
                                && !k.starts_with("x-")
                        })
                        .map(|(k, v)| (k.clone(), self.inline(v, file, stack)))
                        .collect();
                    if extra.is_empty() {
                        return resolved;
                    }
                    let mut out = extra;
                    out.insert("allOf".into(), json!([resolved]));
                    return Value::Object(out);
                }
                let mut out = Map::new();
                for (k, v) in map {
                    if k == "$schema" || k == "$id" || k == "examples" || k == "example" {
                        continue;
                    }
                    out.insert(k.clone(), self.inline(v, file, stack));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.inline(v, file, stack)).collect()),
            other => other.clone(),
        }
    }

    fn compile(&self, schema: &Value) -> Validator {
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(false)
            .build(schema)
            .unwrap_or_else(|e| panic!("spec schema does not compile: {e}"))
    }

    fn cached(&self, key: &str, make: impl FnOnce() -> Option<Value>) -> Option<Arc<Validator>> {
        if let Some(v) = self.compiled.lock().unwrap().get(key) {
            return v.clone();
        }
        let validator = make().map(|schema| Arc::new(self.compile(&schema)));
        self.compiled
            .lock()
            .unwrap()
            .insert(key.to_string(), validator.clone());
        validator
    }

    fn find_operation(&self, method: &str, path: &str) -> Option<&Operation> {
        let segs: Vec<&str> = path.split('/').collect();
        self.operations
            .iter()
            .filter(|op| op.method == method && op.segments.len() == segs.len())
            .filter(|op| {
                op.segments.iter().zip(&segs).all(|(t, s)| match t {
                    Some(lit) => lit == s,
                    None => true,
                })
            })
            // The most specific template (most literal segments) wins.
            .max_by_key(|op| op.segments.iter().filter(|s| s.is_some()).count())
    }

    /// Whether the spec defines `method path` at all.
    pub fn has_operation(&self, method: &str, path: &str) -> bool {
        self.find_operation(method, path).is_some()
    }

    /// Validate a JSON response body of `method path` with `status` against the spec.
    /// Returns `Ok(false)` when the spec has no JSON schema for it (nothing checked).
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<bool, Vec<Violation>> {
        let Some(op) = self.find_operation(method, path) else {
            return Ok(false);
        };
        let key = format!("{}#{}/{status}", op.file.display(), op.pointer);
        let validator = self.cached(&key, || {
            let doc = self.doc(&op.file);
            let operation = doc.pointer(&op.pointer)?;
            let responses = operation.get("responses")?;
            let response = responses
                .get(status.to_string())
                .or_else(|| responses.get("default"))?;
            let mut stack = Vec::new();
            let response = self.inline(response, &op.file, &mut stack);
            let schema = response.pointer("/content/application~1json/schema")?.clone();
            Some(schema)
        });
        match validator {
            None => Ok(false),
            Some(v) => check(&v, body).map(|_| true),
        }
    }

    /// Validate a room event against its event schema, when the spec has one for its type.
    /// `m.room.message` events use the schema of their `msgtype` when there is one; redacted
    /// events are only checked against the core room/state event schema.
    pub fn validate_event(&self, event: &Value) -> Result<bool, Vec<Violation>> {
        let schemas = self.root.join("data/event-schemas/schema");
        let Some(ty) = event.get("type").and_then(Value::as_str) else {
            return Err(vec![Violation {
                instance_path: "/type".into(),
                message: "event has no string `type`".into(),
            }]);
        };
        let redacted = event.pointer("/unsigned/redacted_because").is_some();
        let is_state = event.get("state_key").is_some();
        let mut candidates: Vec<String> = Vec::new();
        if redacted {
            candidates.push(
                if is_state {
                    "core-event-schema/state_event.yaml"
                } else {
                    "core-event-schema/room_event.yaml"
                }
                .into(),
            );
        } else {
            if ty == "m.room.message"
                && let Some(msgtype) = event.pointer("/content/msgtype").and_then(Value::as_str)
            {
                candidates.push(format!("m.room.message${msgtype}.yaml"));
            }
            candidates.push(format!("{ty}.yaml"));
        }
        let Some(file) = candidates.iter().map(|c| schemas.join(c)).find(|p| p.is_file()) else {
            return Ok(false);
        };
        let file = fs::canonicalize(&file).expect("canonical event schema path");
        let key = format!("event:{}", file.display());
        let validator = self.cached(&key, || {
            let doc = self.doc(&file);
            let mut stack = Vec::new();
            Some(self.inline(&doc, &file, &mut stack))
        });
        match validator {
            None => Ok(false),
            Some(v) => check(&v, event).map(|_| true),
        }
    }
}

fn check(validator: &Validator, instance: &Value) -> Result<(), Vec<Violation>> {
    let errors: Vec<Violation> = validator
        .iter_errors(instance)
        .map(|e| Violation {
            instance_path: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_operations_by_template() {
        let spec = Spec::get();
        assert!(spec.has_operation("GET", "/_matrix/client/v3/account/whoami"));
        assert!(spec.has_operation("PUT", "/_matrix/client/v3/rooms/!a:b/send/m.room.message/txn1"));
        assert!(spec.has_operation("PUT", "/_matrix/client/v3/rooms/!a:b/state/m.room.topic/"));
        assert!(!spec.has_operation("GET", "/_matrix/client/v3/no/such/endpoint"));
    }

    #[test]
    fn response_schema_catches_wrong_types() {
        let spec = Spec::get();
        let ok = json!({"user_id": "@a:b", "device_id": "D"});
        assert!(
            spec.validate_response("GET", "/_matrix/client/v3/account/whoami", 200, &ok)
                .unwrap()
        );
        let bad = json!({"user_id": 5});
        let errs = spec
            .validate_response("GET", "/_matrix/client/v3/account/whoami", 200, &bad)
            .unwrap_err();
        assert_eq!(errs[0].instance_path, "/user_id");
        let err = json!({"error": "x"});
        assert!(
            spec.validate_response("GET", "/_matrix/client/v3/account/whoami", 401, &err)
                .is_err()
        );
    }

    #[test]
    fn event_schema_checks_content() {
        let spec = Spec::get();
        let mut ev = json!({"type": "m.room.message", "event_id": "$e", "sender": "@a:b", "room_id": "!r:b",
            "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "hi"}});
        assert!(spec.validate_event(&ev).unwrap());
        ev["content"]["body"] = json!(3);
        let errs = spec.validate_event(&ev).unwrap_err();
        assert!(
            errs.iter().any(|e| e.instance_path == "/content/body"),
            "{errs:?}"
        );
    }

    #[test]
    fn finds_server_server_operations() {
        let spec = Spec::get();
        assert!(spec.has_operation("GET", "/_matrix/key/v2/server"));
        assert!(spec.has_operation("GET", "/_matrix/federation/v1/version"));
        assert!(spec.has_operation("PUT", "/_matrix/federation/v2/send_join/!r:b/$e"));
        assert!(spec.has_operation("GET", "/_matrix/federation/v1/make_join/!r:b/@u:b"));
        let bad = json!({"server": {"name": 3}});
        assert!(
            spec.validate_response("GET", "/_matrix/federation/v1/version", 200, &bad)
                .is_err()
        );
    }

    #[test]
    fn sync_schema_compiles() {
        let spec = Spec::get();
        let body = json!({"next_batch": "s1"});
        assert!(
            spec.validate_response("GET", "/_matrix/client/v3/sync", 200, &body)
                .unwrap()
        );
    }
}
