//! Sharing push rule outcomes between the members an event is evaluated for.
//!
//! A rule's outcome for a member other than the sender depends on the event, the room (its
//! member count and power levels) and the rule, and on the member only through the
//! `contains_display_name` condition. So members whose rule sets hold the same rule (every
//! server-default rule except the few naming the user) get the same answer, and one event's
//! evaluation computes it once (`EventMemo`) instead of once per member: pattern matching
//! lowercases and compiles a glob on every check, which made evaluation most of a large room's
//! send cost.
//!
//! A rule that names the member (`.m.rule.invite_for_me`, `.m.rule.is_user_mention`) is
//! evaluated per member, but its other conditions are not about the member: they are shared the
//! same way (`Prefilter`), and when one of them fails the rule fails for every member without
//! its own condition being looked at (`invite_for_me` asks once per event whether it is a member
//! event at all).

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    sync::{Arc, Mutex, OnceLock},
};

use ruma::{
    UserId,
    push::{AnyPushRuleRef, FlattenedJson, PushCondition, PushConditionRoomCtx, Ruleset},
};

/// A user's rule set with, for each rule in evaluation order (`Ruleset::iter`), the key of what
/// it tests when that does not depend on the member.
pub struct Rules {
    pub set: Ruleset,
    keys: Box<[Option<RuleKey>]>,
    /// For each rule without a key: its conditions that do not depend on the member.
    prefilters: Box<[Prefilter]>,
    /// Whether a rule tests the member's display name (`contains_display_name`).
    reads_display_name: bool,
}

/// Conditions a rule needs (a conditional rule applies only when all of its conditions hold)
/// whose outcome is the same for every member, each with its key.
type Prefilter = Box<[(RuleKey, PushCondition)]>;

impl Rules {
    /// `user_id`'s rule set. Rules naming the user (their ID, or their localpart as a content
    /// pattern: the default mention rules) have no key: no other member shares their outcome,
    /// so memoizing them would only cost an insertion per member and event.
    pub fn new(set: Ruleset, user_id: &UserId) -> Self {
        let own_pattern = format!("\"pattern\":\"{}\"", user_id.localpart());
        let names_member = |text: &str| text.contains(user_id.as_str()) || text.contains(&own_pattern);
        let keys: Box<[Option<RuleKey>]> = set
            .iter()
            .map(|rule| RuleKey::of(rule).filter(|key| !names_member(&key.text)))
            .collect();
        let prefilters = set
            .iter()
            .zip(keys.iter())
            .map(|(rule, key)| match (rule, key) {
                (AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r), None) => r
                    .conditions
                    .iter()
                    .filter_map(|condition| {
                        RuleKey::of_condition(condition)
                            .filter(|key| !names_member(&key.text))
                            .map(|key| (key, condition.clone()))
                    })
                    .collect(),
                _ => Box::default(),
            })
            .collect();
        #[allow(deprecated)]
        let reads_display_name = set.iter().any(|rule| match rule {
            AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => r
                .conditions
                .iter()
                .any(|c| matches!(c, PushCondition::ContainsDisplayName)),
            _ => false,
        });
        Self {
            set,
            keys,
            prefilters,
            reads_display_name,
        }
    }

    /// Whether evaluating these rules needs the member's display name.
    pub fn reads_display_name(&self) -> bool {
        self.reads_display_name
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
        Some(Self::new(format!("{kind}:{json}")))
    }

    /// A condition whose outcome depends only on the event and the room, never on the member
    /// it is evaluated for: ruma's `applies` reads none of the member's fields for these, except
    /// to refuse the sender, who is never evaluated for.
    fn of_condition(condition: &PushCondition) -> Option<Self> {
        use PushCondition::*;
        match condition {
            EventMatch(_)
            | EventPropertyIs(_)
            | EventPropertyContains(_)
            | RoomMemberCount(_)
            | SenderNotificationPermission(_) => {
                let json = serde_json::to_string(condition).ok()?;
                Some(Self::new(format!("condition:{json}")))
            }
            _ => None,
        }
    }

    fn new(text: String) -> Self {
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(&text);
        Self {
            hash,
            text: intern(text),
        }
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
    applies: HashMap<RuleKey, bool, BuildHasherDefault<KeyHash>>,
}

/// Hashes a `RuleKey` by the hash it carries (already keyed per process), instead of hashing
/// that again for each of a member's rules.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected (`RuleKey::hash`); anything else is still hashed.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
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
        for ((rule, key), prefilter) in rules
            .set
            .iter()
            .zip(rules.keys.iter())
            .zip(rules.prefilters.iter())
        {
            let applies = match key {
                Some(key) => self.remembered(key, rule.applies(event, ctx)).await,
                None => self.all_hold(prefilter, event, ctx).await && rule.applies(event, ctx).await,
            };
            if applies {
                return rule.actions();
            }
        }
        &[]
    }

    /// Whether every member-independent condition holds, each computed once per event.
    async fn all_hold(
        &mut self,
        prefilter: &Prefilter,
        event: &FlattenedJson,
        ctx: &PushConditionRoomCtx,
    ) -> bool {
        for (key, condition) in prefilter {
            if !self.remembered(key, condition.applies(event, ctx)).await {
                return false;
            }
        }
        true
    }

    /// The answer already computed for `key` during this event, else `answer`'s, remembered.
    async fn remembered(&mut self, key: &RuleKey, answer: impl Future<Output = bool>) -> bool {
        if let Some(&known) = self.applies.get(key) {
            return known;
        }
        let answer = answer.await;
        self.applies.insert(key.clone(), answer);
        answer
    }
}

#[cfg(test)]
mod tests {
    use ruma::{UserId, push::Ruleset};

    use super::Rules;

    #[test]
    fn only_rules_that_do_not_name_the_member_are_shared() {
        let alice = UserId::parse("@alice:example.org").unwrap();
        let rules = Rules::new(Ruleset::server_default(&alice), &alice);
        let keyed = |id: &str| {
            rules
                .set
                .iter()
                .zip(rules.keys.iter())
                .find(|(rule, _)| rule.rule_id() == id)
                .map(|(_, key)| key.is_some())
                .unwrap_or_else(|| panic!("{id} is a default rule"))
        };
        assert!(keyed(".m.rule.message"));
        assert!(keyed(".m.rule.is_room_mention"));
        // Name alice: their outcome is hers alone.
        assert!(!keyed(".m.rule.is_user_mention"));
        assert!(!keyed(".m.rule.invite_for_me"));
        // Their conditions that are not about alice are still shared.
        let prefilter = |id: &str| {
            let at = rules.set.iter().position(|rule| rule.rule_id() == id).unwrap();
            rules.prefilters[at]
                .iter()
                .map(|(key, _)| key.text.to_string())
                .collect::<Vec<_>>()
        };
        let invite = prefilter(".m.rule.invite_for_me");
        assert_eq!(invite.len(), 2, "type and membership, not state_key: {invite:?}");
        assert!(invite.iter().all(|text| !text.contains("alice")));
        assert!(prefilter(".m.rule.is_user_mention").is_empty());
        assert!(prefilter(".m.rule.message").is_empty(), "keyed rules need none");
        assert!(!rules.reads_display_name());

        // A legacy rule set that still tests display names.
        let mut legacy = Ruleset::server_default(&alice);
        let rule: ruma::push::NewConditionalPushRule = serde_json::from_value(serde_json::json!({
            "rule_id": "name", "conditions": [{ "kind": "contains_display_name" }], "actions": ["notify"],
        }))
        .unwrap();
        legacy
            .insert(ruma::push::NewPushRule::Override(rule), None, None)
            .unwrap();
        assert!(Rules::new(legacy, &alice).reads_display_name());

        // The same rule in two members' sets is one interned key.
        let bob = UserId::parse("@bob:example.org").unwrap();
        let bobs = Rules::new(Ruleset::server_default(&bob), &bob);
        let message = |r: &Rules| {
            r.set
                .iter()
                .zip(r.keys.iter())
                .find(|(rule, _)| rule.rule_id() == ".m.rule.message")
                .and_then(|(_, key)| key.clone())
                .unwrap()
        };
        assert!(message(&rules) == message(&bobs));
        assert!(std::sync::Arc::ptr_eq(
            &message(&rules).text,
            &message(&bobs).text
        ));
    }
}
