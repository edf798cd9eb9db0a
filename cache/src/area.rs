//! Areas: folders the cache hands out for state that is not a stage result, so that every
//! folder under the cache root is declared in one place (as uv's cache buckets are).
//!
//! An area's format is versioned by its folder name: a change its readers cannot read moves
//! it to a new name (`journal` -> `journal-v2`), and the old folder is left for the user to
//! delete, never misread.

use std::path::PathBuf;

use crate::{fsio, Cache, CacheError};

/// A folder of the cache that belongs to one job outside the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Area {
    /// Generation journals: every answered LLM request, keyed by the request, so no answer
    /// is paid for twice. Written by `flow_generate::Journal`; `flow gc` compacts them and
    /// never deletes them.
    Journal,
    /// Datasets downloaded from the Hugging Face hub, by repository and revision, verified
    /// against the hub's checksums. Kept across runs; safe to delete (they download again).
    Downloads,
    /// Scripts and logs of the jobs `flow run --executor slurm|process` starts, one folder
    /// per run. On a shared cache the nodes write their logs here. Safe to delete between
    /// runs.
    Jobs,
}

impl Area {
    /// Every area.
    pub const ALL: [Area; 3] = [Area::Journal, Area::Downloads, Area::Jobs];

    /// The area's folder under the cache root (its name carries its format version).
    pub fn dir_name(self) -> &'static str {
        match self {
            Area::Journal => "journal",
            Area::Downloads => "downloads",
            Area::Jobs => "jobs",
        }
    }
}

impl Cache {
    /// The folder of `area`, created if missing.
    pub fn area(&self, area: Area) -> Result<PathBuf, CacheError> {
        let dir = self.root().join(area.dir_name());
        fsio::create_dir(&dir)?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::cache;

    #[test]
    fn areas_have_distinct_folders_beside_the_layout() {
        let (_d, c) = cache();
        let mut names: Vec<&str> = Area::ALL.iter().map(|a| a.dir_name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Area::ALL.len());
        for area in Area::ALL {
            let dir = c.area(area).unwrap();
            assert!(dir.is_dir());
            assert!(!crate::SUBDIRS.contains(&area.dir_name()));
        }
    }

    /// gc leaves the areas' contents alone.
    #[test]
    fn gc_keeps_the_areas() {
        let (_d, c) = cache();
        let journal = c.area(Area::Journal).unwrap().join("generate");
        std::fs::create_dir_all(&journal).unwrap();
        std::fs::write(journal.join("journal.jsonl"), b"{}\n").unwrap();
        c.gc(false).unwrap();
        assert!(journal.join("journal.jsonl").is_file());
    }
}
