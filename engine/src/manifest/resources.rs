//! The resource sections, `[models.*]`, `[generators.*]` or whatever else the registry
//! declares (`Registry::register_resource`): named entries whose fields the declaration
//! lists. Every resource section is read here, whichever it is.

use std::collections::BTreeMap;

use toml::de::DeValue;
use toml::Spanned;

use super::{valid_name, Loader, Manifest, Resource};
use crate::diag::Diagnostic;

impl Loader<'_> {
    /// Reads `[SECTION.*]` of one file into the manifest; a name another file defined
    /// already is an error naming both.
    pub(super) fn resources(
        &mut self,
        m: &mut Manifest,
        section: &str,
        value: Spanned<DeValue<'_>>,
    ) {
        let Some(entries) = self.table(section, value) else {
            return;
        };
        let registry = self.registry;
        let specs = registry
            .resource_kind(section)
            .map(|k| k.params.as_slice())
            .unwrap_or(&[]);
        for (key, value) in entries {
            let name = key.get_ref().to_string();
            let path = format!("{section}.{name}");
            let key_span = self.at(key.span());
            if !valid_name(&name) {
                self.err(Diagnostic::new(
                    &path,
                    key_span,
                    format!("invalid name `{name}`: use letters, digits, `-` and `_`"),
                ));
                continue;
            }
            let first = m.resource_entries(section).get(&name);
            if let Some(first) = first.map(|r| r.span.clone()) {
                let d = self.defined_twice(&format!("`[{path}]`"), &path, first, key_span);
                self.err(d);
                continue;
            }
            let Some(fields) = self.table(&path, value) else {
                continue;
            };
            let mut resource = Resource {
                name: name.clone(),
                span: key_span,
                fields: BTreeMap::new(),
            };
            for (fkey, fvalue) in fields {
                let fname = fkey.get_ref().to_string();
                let fpath = format!("{path}.{fname}");
                let fspan = self.at(fkey.span());
                let Some(v) = self.value(&fpath, fvalue) else {
                    continue;
                };
                match specs.iter().find(|s| s.name == fname) {
                    Some(spec) => {
                        let v = self.check_param(&fpath, spec, v, false);
                        resource.fields.insert(fname, v);
                    }
                    None => self.err(
                        Diagnostic::new(
                            &fpath,
                            fspan,
                            format!("unknown key `{fname}` in `[{path}]`"),
                        )
                        .suggest(&fname, specs.iter().map(|s| s.name)),
                    ),
                }
            }
            for spec in specs.iter().filter(|s| s.required) {
                if !resource.fields.contains_key(spec.name) {
                    self.err(Diagnostic::new(
                        &path,
                        resource.span.clone(),
                        format!("`[{path}]` needs `{}` ({})", spec.name, spec.help),
                    ));
                }
            }
            m.resources
                .entry(section.to_string())
                .or_default()
                .insert(name, resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::tests::errors;

    /// Each row: a resource table, and a part of its error (empty: none). The test
    /// registry declares `models` and `generators` with no fields, so any field is unknown.
    #[test]
    fn resource_tables_are_checked() {
        let rows = [
            ("[models.m]\n", ""),
            ("[generators.g]\n", ""),
            ("[modles.m]\n", "did you mean `models`?"),
            ("[models.\"a b\"]\n", "invalid name `a b`"),
            (
                "[models.m]\nsize = 1\n",
                "unknown key `size` in `[models.m]`",
            ),
            ("models = 3\n", "`models` must be a table, found an integer"),
            (
                "[models]\nm = 3\n",
                "`models.m` must be a table, found an integer",
            ),
        ];
        for (table, expected) in rows {
            let err = errors(&format!("{table}[flow]\nname = \"t\"\n"));
            if expected.is_empty() {
                assert!(err.is_empty(), "{table}: {err}");
            } else {
                assert!(err.contains(expected), "{table}: {err}");
            }
        }
    }
}
