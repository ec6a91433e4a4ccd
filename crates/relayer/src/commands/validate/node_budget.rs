//! The node budget of an apply manifest: how many YAML nodes its documents
//! may expand to, counted *before* anything is built, so an alias bomb (one
//! anchor of thousands of items aliased thousands of times, "billion laughs")
//! is refused in bounded memory and time instead of being expanded.
//!
//! The count runs the YAML parser with a visitor that builds nothing: every
//! node — including each node an alias replays — takes one unit, and the
//! visitor stops the parser the moment the budget is spent. Memory is the
//! parser's own event list (linear in the document's size); time is at most
//! the budget.
//!
//! Three limits, over the whole manifest:
//! - **expansion**: aliases may not make the manifest larger than it is
//!   written. Written out, every node takes at least one byte, so a manifest
//!   may expand to at most one node per byte of its text, plus
//!   [`ALIAS_ALLOWANCE`] for the small templates people really write
//!   (`<<: *defaults`);
//! - **total**: at most [`MAX_MANIFEST_NODES`] nodes, which bounds the
//!   memory of the trees built afterwards whatever the manifest's size;
//! - **depth**: collections nested at most [`MAX_DEPTH`] deep, which bounds
//!   the recursion of everything that walks the tree afterwards.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

/// Nodes one manifest may hold after alias expansion: about 1.5 MiB of
/// ordinary YAML (a large CRD has about 30,000). Validating the largest
/// manifest this allows (4 MiB of text) raised the relayer's peak memory by 33 MiB
/// (the frame, the parser's events, the YAML tree and its JSON); a quarter
/// of a million nodes took 60 MiB. Larger bundles go in several commands.
pub const MAX_MANIFEST_NODES: usize = 100_000;

/// Nodes aliases may add beyond one per byte of text.
pub const ALIAS_ALLOWANCE: usize = 10_000;

/// Collections nested in one another, at most. A CRD's schema nests about
/// 40 deep; the YAML parser itself stops at 128.
pub const MAX_DEPTH: usize = 100;

/// Why a manifest's documents may not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// The nodes exceed the manifest's size: aliases expand it.
    Aliasing { limit: usize },
    /// More nodes than any manifest may hold.
    TooManyNodes { limit: usize },
    /// Collections nested deeper than [`MAX_DEPTH`].
    TooDeep { limit: usize },
}

impl OverBudget {
    pub fn describe(self) -> String {
        match self {
            OverBudget::Aliasing { limit } => format!(
                "its YAML aliases expand to more than {limit} nodes, far beyond the manifest's own size (an alias bomb): write repeated parts out instead of aliasing them"
            ),
            OverBudget::TooManyNodes { limit } => format!(
                "it holds more than {limit} YAML nodes: split it into several apply commands"
            ),
            OverBudget::TooDeep { limit } => format!(
                "it nests lists and mappings more than {limit} levels deep: no Kubernetes object needs that"
            ),
        }
    }
}

/// The budget left for one manifest, shared by its documents.
#[derive(Debug)]
pub struct NodeBudget {
    remaining: Cell<usize>,
    exceeded: Cell<Option<OverBudget>>,
    why: OverBudget,
}

impl NodeBudget {
    /// The budget of a manifest of `manifest_bytes` bytes.
    pub fn for_manifest(manifest_bytes: usize) -> Self {
        let by_size = manifest_bytes.saturating_add(ALIAS_ALLOWANCE);
        let (limit, why) = if by_size < MAX_MANIFEST_NODES {
            (by_size, OverBudget::Aliasing { limit: by_size })
        } else {
            (
                MAX_MANIFEST_NODES,
                OverBudget::TooManyNodes {
                    limit: MAX_MANIFEST_NODES,
                },
            )
        };
        Self {
            remaining: Cell::new(limit),
            exceeded: Cell::new(None),
            why,
        }
    }

    /// Counts the nodes of one YAML document (`text`), aliases expanded.
    /// `Err` only when the budget is spent; a document the parser refuses
    /// counts as within budget, and the real parse reports its error.
    pub fn count_document(&self, text: &str) -> Result<(), OverBudget> {
        let counted = Counter {
            budget: self,
            depth: 0,
        }
        .deserialize(serde_yaml_ng::Deserializer::from_str(text));
        match (counted, self.exceeded.get()) {
            (_, Some(over)) => Err(over),
            _ => Ok(()),
        }
    }

    fn take(&self) -> bool {
        match self.remaining.get().checked_sub(1) {
            Some(left) => {
                self.remaining.set(left);
                true
            }
            None => {
                self.exceeded.set(Some(self.why));
                false
            }
        }
    }
}

/// The visitor that counts: every value it is shown is one node, and
/// collections are walked element by element so nothing is kept.
#[derive(Clone, Copy)]
struct Counter<'a> {
    budget: &'a NodeBudget,
    /// Collections around the node being counted.
    depth: usize,
}

impl Counter<'_> {
    fn node<E: de::Error>(self) -> Result<(), E> {
        if self.budget.take() {
            Ok(())
        } else {
            Err(E::custom("node budget exceeded"))
        }
    }

    /// The counter for the elements of a collection at this node.
    fn inside<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            self.budget
                .exceeded
                .set(Some(OverBudget::TooDeep { limit: MAX_DEPTH }));
            return Err(E::custom("nesting budget exceeded"));
        }
        Ok(Counter {
            budget: self.budget,
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.node()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.node()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.node()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.node()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.node()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.node()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.node()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.node()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.node()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.node()
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.node()?;
        let inner = self.inside()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.node()?;
        let inner = self.inside()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }

    /// A tagged node (`!Custom value`): the tag is one node, its value the rest.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes `text` holds, counted under its own manifest budget.
    fn count(text: &str) -> Result<usize, OverBudget> {
        let budget = NodeBudget::for_manifest(text.len());
        let start = budget.remaining.get();
        budget.count_document(text)?;
        Ok(start - budget.remaining.get())
    }

    /// One anchor of `items` items aliased `aliases` times.
    fn bomb(items: usize, aliases: usize) -> String {
        let list = vec!["x"; items].join(",");
        let mut text = format!("a: &a [{list}]\nb: [");
        text.push_str(&vec!["*a"; aliases].join(","));
        text.push_str("]\n");
        text
    }

    #[test]
    fn nodes_are_counted_with_aliases_expanded() {
        let table: &[(&str, &str, usize)] = &[
            ("scalar", "x\n", 1),
            ("mapping", "a: 1\nb: [x, y]\n", 1 + 2 + 1 + 3),
            (
                "alias replays its anchor",
                "a: &l [1, 2]\nb: *l\n",
                1 + 1 + 3 + 1 + 3,
            ),
            (
                "merge key",
                "base: &b {k: v}\nobj:\n  <<: *b\n  n: 1\n",
                1 + 1 + 3 + 1 + 1 + 1 + 3 + 2,
            ),
            ("tagged value", "a: !Custom {k: v}\n", 1 + 1 + 1 + 3),
            ("null", "~\n", 1),
        ];
        for (name, text, expected) in table {
            assert_eq!(count(text), Ok(*expected), "{name}");
        }
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        // The reproduction: ~10 KB, 2,000 items aliased 2,000 times.
        let text = bomb(2_000, 2_000);
        assert!(text.len() < 12_000, "{}", text.len());
        assert!(matches!(count(&text), Err(OverBudget::Aliasing { .. })));
        // The classic nested "billion laughs".
        let mut laughs = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            laughs.push_str(&format!(
                "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
            ));
        }
        assert!(matches!(count(&laughs), Err(OverBudget::Aliasing { .. })));
    }

    #[test]
    fn modest_aliasing_and_large_plain_manifests_pass() {
        assert!(
            count(&bomb(50, 50)).is_ok(),
            "2,500 aliased nodes are a template, not a bomb"
        );
        let many = "- x\n".repeat(90_000);
        assert_eq!(count(&many), Ok(90_001));
    }

    #[test]
    fn the_total_is_capped_whatever_the_size() {
        let huge = "[".to_string() + &"0,".repeat(MAX_MANIFEST_NODES) + "0]";
        assert_eq!(
            count(&huge),
            Err(OverBudget::TooManyNodes {
                limit: MAX_MANIFEST_NODES
            })
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        assert!(count(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            count(&nested(MAX_DEPTH + 1)),
            Err(OverBudget::TooDeep { limit: MAX_DEPTH })
        );
        let mappings =
            (0..=MAX_DEPTH).fold(String::from("x"), |inner, _| format!("{{a: {inner}}}"));
        assert_eq!(
            count(&mappings),
            Err(OverBudget::TooDeep { limit: MAX_DEPTH })
        );
    }

    #[test]
    fn parse_errors_are_left_to_the_real_parse() {
        assert!(count("a: [1, 2\n").is_ok());
        assert!(count("a: *missing\n").is_ok());
    }

    #[test]
    fn the_budget_is_shared_by_documents() {
        let budget = NodeBudget::for_manifest(0);
        let doc = "[".to_string() + &"0,".repeat(6_000) + "0]";
        assert!(budget.count_document(&doc).is_ok());
        assert!(
            budget.count_document(&doc).is_err(),
            "two halves over the budget"
        );
    }
}
