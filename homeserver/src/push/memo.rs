//! Sharing push rule outcomes between the members an event is evaluated for.
//!
//! A rule's outcome for a member other than the sender depends on the event, the room (its
//! member count and power levels) and the rule, and on the member only through the
//! `contains_display_name` condition. So members whose rule sets hold the same rule (every
//! server-default rule except the few naming the user) get the same answer, and one event's
//! evaluation computes it once (`EventMemo`) instead of once per member: pattern matching
//! lowercases and compiles a glob on every check, which made evaluation most of a large room's
//! send cost.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash, Hasher, RandomState},
    sync::{Arc, Mutex, OnceLock},
};

use ruma::push::{AnyPushRuleRef, FlattenedJson, PushCondition, PushConditionRoomCtx, Ruleset};

/// A user's rule set with, for each rule in evaluation order (`Ruleset::iter`), the key of what
/// it tests when that does not depend on the member.
pub struct Rules {
    pub set: Ruleset,
    keys: Box<[Option<RuleKey>]>,
}

impl Rules {
    pub fn new(set: Ruleset) -> Self {
        let keys = set.iter().map(RuleKey::of).collect();
        Self { set, keys }
    }
}

/// A member-independent rule, by its kind and serialized form (two rules with the same key test
/// the same thing). The hash is computed once, with a key random per process, so a user's own
/// rules cannot be crafted to collide.
#[derive(Clone, Eq)]
struct RuleKey {
    hash: u64,
    text: Arc<str>,
}

impl RuleKey {
    fn of(rule: AnyPushRuleRef<'_>) -> Option<Self> {
        // Deprecated by the spec (`m.mentions` replaces it) but still in the default rules.
        #[allow(deprecated)]
        let has_display_name = |r: &ruma::push::ConditionalPushRule| {
            r.conditions
                .iter()
                .any(|c| matches!(c, PushCondition::ContainsDisplayName))
        };
        let serialized = match rule {
            AnyPushRuleRef::Override(r) if !has_display_name(r) => {
                serde_json::to_string(r).map(|s| ("override", s))
            }
            AnyPushRuleRef::Underride(r) if !has_display_name(r) => {
                serde_json::to_string(r).map(|s| ("underride", s))
            }
            AnyPushRuleRef::Content(r) => serde_json::to_string(r).map(|s| ("content", s)),
            AnyPushRuleRef::Room(r) => serde_json::to_string(r).map(|s| ("room", s)),
            AnyPushRuleRef::Sender(r) => serde_json::to_string(r).map(|s| ("sender", s)),
            // Rules naming the member's display name, and kinds this code does not know: evaluated
            // per member.
            _ => return None,
        };
        let (kind, json) = serialized.ok()?;
        let text = format!("{kind}:{json}");
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(&text);
        Some(Self {
            hash,
            text: intern(text),
        })
    }
}

/// Distinct rules kept shared, so that equal keys are usually one allocation and compare by
/// pointer (the default rules are the same for almost every user).
const MAX_INTERNED: usize = 100_000;

fn intern(text: String) -> Arc<str> {
    static INTERNED: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);
    let Ok(mut guard) = INTERNED.lock() else {
        return text.into();
    };
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(text.as_str()) {
        return found.clone();
    }
    if set.len() >= MAX_INTERNED {
        set.clear();
    }
    let shared: Arc<str> = text.into();
    set.insert(shared.clone());
    shared
}

impl PartialEq for RuleKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Hash for RuleKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The outcomes of member-independent rules for one event, filled as its members are evaluated.
#[derive(Default)]
pub struct EventMemo {
    applies: HashMap<RuleKey, bool>,
}

impl EventMemo {
    /// The actions of the first rule of `rules` that applies to `event` for the member in `ctx`
    /// (never the sender), or none.
    pub async fn actions<'r>(
        &mut self,
        rules: &'r Rules,
        event: &FlattenedJson,
        ctx: &PushConditionRoomCtx,
    ) -> &'r [ruma::push::Action] {
        for (rule, key) in rules.set.iter().zip(rules.keys.iter()) {
            let applies = match key {
                Some(key) => match self.applies.get(key) {
                    Some(&known) => known,
                    None => {
                        let answer = rule.applies(event, ctx).await;
                        self.applies.insert(key.clone(), answer);
                        answer
                    }
                },
                None => rule.applies(event, ctx).await,
            };
            if applies {
                return rule.actions();
            }
        }
        &[]
    }
}
