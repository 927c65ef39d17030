//! The segment definitions of a workspace: every `.seg` file of its segments folder, parsed,
//! with the syntax errors of each file and the names defined twice.

use std::path::Path;

use crate::error::{Error, Result};
use crate::segment::ast::{Definition, EventDef, SegmentDef};
use crate::segment::diag::{Diagnostic, Source};
use crate::segment::parser::parse;

/// One parsed file.
#[derive(Debug, Clone)]
pub struct File {
    pub source: Source,
    pub defs: Vec<Definition>,
    /// Syntax errors and duplicate names.
    pub errors: Vec<Diagnostic>,
}

#[derive(Debug, Clone, Default)]
pub struct Library {
    pub files: Vec<File>,
}

impl Library {
    /// Every `*.seg` file of `dir`, in name order. A missing folder is an empty library.
    /// Paths are shown relative to `base` (the workspace folder).
    pub fn load(dir: &Path, base: &Path) -> Result<Library> {
        let mut paths = Vec::new();
        if dir.exists() {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(dir, e))?.path();
                if path.extension().is_some_and(|e| e == "seg") {
                    paths.push(path);
                }
            }
        }
        paths.sort();
        let mut sources = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            sources.push(Source {
                path: path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
                text,
            });
        }
        Ok(Library::from_sources(sources))
    }

    pub fn from_sources(sources: Vec<Source>) -> Library {
        let mut lib = Library {
            files: sources
                .into_iter()
                .map(|source| {
                    let (defs, errors) = parse(&source.text);
                    File {
                        source,
                        defs,
                        errors,
                    }
                })
                .collect(),
        };
        lib.find_duplicates();
        lib
    }

    fn find_duplicates(&mut self) {
        let mut seen: Vec<(String, String)> = Vec::new();
        for f in &mut self.files {
            for def in &f.defs {
                let (kind, name) = match def {
                    Definition::Event(e) => ("event", &e.name),
                    Definition::Segment(s) => ("segment", &s.name),
                };
                let key = (kind.to_string(), name.text.clone());
                if seen.contains(&key) {
                    f.errors.push(
                        Diagnostic::new(
                            name.span,
                            format!("{kind} `{}` is defined more than once", name.text),
                        )
                        .help("names are shared by every .seg file of the workspace; rename one"),
                    );
                } else {
                    seen.push(key);
                }
            }
            f.errors.sort_by_key(|d| d.span.start);
        }
    }

    /// The first definition of segment `name`, with its file index.
    pub fn segment(&self, name: &str) -> Option<(usize, &SegmentDef)> {
        self.files.iter().enumerate().find_map(|(i, f)| {
            f.defs.iter().find_map(|d| match d {
                Definition::Segment(s) if s.name.text == name => Some((i, s)),
                _ => None,
            })
        })
    }

    pub fn event(&self, name: &str) -> Option<(usize, &EventDef)> {
        self.files.iter().enumerate().find_map(|(i, f)| {
            f.defs.iter().find_map(|d| match d {
                Definition::Event(e) if e.name.text == name => Some((i, e)),
                _ => None,
            })
        })
    }

    pub fn segments(&self) -> impl Iterator<Item = (usize, &SegmentDef)> {
        self.files.iter().enumerate().flat_map(|(i, f)| {
            f.defs.iter().filter_map(move |d| match d {
                Definition::Segment(s) => Some((i, s)),
                _ => None,
            })
        })
    }

    pub fn segment_names(&self) -> impl Iterator<Item = &str> {
        self.segments().map(|(_, s)| s.name.text.as_str())
    }

    pub fn event_names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().flat_map(|f| {
            f.defs.iter().filter_map(|d| match d {
                Definition::Event(e) => Some(e.name.text.as_str()),
                _ => None,
            })
        })
    }
}
