//! Resources: named entries a manifest declares in sections of their own, such as
//! `[models.NAME]` (weights) and `[generators.NAME]` (how text is generated), which stage
//! parameters of type [`ParamType::Resource`] name.
//!
//! The engine knows no section by name: the binary declares each kind of resource once
//! ([`ResourceKind`], [`crate::Registry::register_resource`]): its section, its fields, which of
//! them stay out of content keys (fields not `in_key`: execution settings, secrets) and
//! which fields may name an entry of another section. The manifest accepts the declared
//! sections, and a key takes an entry's content from the declaration alone
//! ([`crate::key::key_params`]).
//!
//! [`ParamType::Resource`]: crate::schema::ParamType::Resource

use std::collections::BTreeMap;

use crate::schema::ParamSpec;
use crate::value::Value;

/// One kind of resource: a section of the manifest whose entries are tables of declared
/// fields.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceKind {
    /// The manifest section, e.g. `models`: entries are `[models.NAME]`.
    pub section: &'static str,
    /// What an entry is, in a few words, e.g. "where a model's weights come from".
    pub about: &'static str,
    /// The fields an entry accepts. Those not `in_key` (`.execution()`, `.secret()`) never
    /// enter a content key: what an entry stands for in a key is its other fields.
    pub params: Vec<ParamSpec>,
    /// Fields whose value may name an entry of another section, as (field, section): when
    /// it does, it stands for that entry's content in keys, so editing the entry it names
    /// invalidates what used it (a local generator's `model` names a `[models.*]` entry).
    pub links: Vec<(&'static str, &'static str)>,
}

impl ResourceKind {
    pub fn new(section: &'static str, about: &'static str, params: Vec<ParamSpec>) -> Self {
        ResourceKind {
            section,
            about,
            params,
            links: Vec::new(),
        }
    }

    /// Declares that `field` may name an entry of `section`.
    pub fn link(mut self, field: &'static str, section: &'static str) -> Self {
        self.links.push((field, section));
        self
    }

    pub fn param(&self, field: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == field)
    }

    /// The section `field` may name an entry of, if it is a link.
    pub fn link_of(&self, field: &str) -> Option<&'static str> {
        self.links
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, section)| *section)
    }
}

/// The fields of one resource entry, as written in the manifest.
pub type ResourceEntry = BTreeMap<String, Value>;

/// The manifest's resources as stages see them, by section and name, with secrets left as
/// the names of environment variables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    sections: BTreeMap<String, BTreeMap<String, ResourceEntry>>,
}

impl Resources {
    /// The entry `[SECTION.NAME]`, if the manifest has it.
    pub fn get(&self, section: &str, name: &str) -> Option<&ResourceEntry> {
        self.sections.get(section)?.get(name)
    }

    /// The entries of one section, by name (none when the manifest has no such section).
    pub fn entries(&self, section: &str) -> impl Iterator<Item = (&str, &ResourceEntry)> {
        self.sections
            .get(section)
            .into_iter()
            .flatten()
            .map(|(name, entry)| (name.as_str(), entry))
    }

    /// Adds (or replaces) the entry `[SECTION.NAME]`.
    pub fn insert(
        &mut self,
        section: impl Into<String>,
        name: impl Into<String>,
        entry: ResourceEntry,
    ) {
        self.sections
            .entry(section.into())
            .or_default()
            .insert(name.into(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_section_and_name() {
        let mut r = Resources::default();
        let entry = BTreeMap::from([("path".to_string(), Value::Str("w.gguf".into()))]);
        r.insert("models", "m", entry.clone());
        assert_eq!(r.get("models", "m"), Some(&entry));
        assert_eq!(r.get("models", "other"), None);
        assert_eq!(r.get("generators", "m"), None);
        assert_eq!(
            r.entries("models").map(|(n, _)| n).collect::<Vec<_>>(),
            ["m"]
        );
        assert_eq!(r.entries("generators").count(), 0);
    }

    #[test]
    fn a_kind_knows_its_fields_and_links() {
        let kind = ResourceKind::new(
            "generators",
            "how text is generated",
            vec![
                ParamSpec::string("model", "a model"),
                ParamSpec::int("threads", "cores").execution(),
            ],
        )
        .link("model", "models");
        assert!(kind.param("threads").is_some_and(|p| !p.in_key));
        assert!(kind.param("nope").is_none());
        assert_eq!(kind.link_of("model"), Some("models"));
        assert_eq!(kind.link_of("threads"), None);
    }
}
