//! Maps YAML paths (`clusters[0].endpoints[1].address`) to the line they
//! start on, so validation errors raised after deserialization can still
//! point the operator at the right line. serde_yaml keeps no spans, so the
//! file is walked once more with yaml-rust2's event parser.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Path → 1-based line of every key and sequence item in a YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Index `source`; a document that does not parse yields an empty index
    /// (serde_yaml reports the syntax error with its own location).
    pub fn build(source: &str) -> LineIndex {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut walker, false).is_err() {
            return LineIndex::default();
        }
        LineIndex {
            lines: walker.lines,
        }
    }

    /// The line of `path`, or of its nearest indexed ancestor.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Walker {
    /// Path of the node that starts now, and whether it is a mapping key.
    fn place_node(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            // No pending key: this node is a key.
            Some(Frame::Mapping { path, key }) => key.take().map(|key| join(path, &key)),
            Some(Frame::Sequence { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.lines.insert(item.clone(), line);
                Some(item)
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(value, ..) => {
                let is_key = self.place_node(line).is_none();
                if let (true, Some(Frame::Mapping { path, key })) = (is_key, self.stack.last_mut())
                {
                    self.lines.insert(join(path, &value), line);
                    *key = Some(value);
                }
            }
            Event::Alias(_) => {
                self.place_node(line);
            }
            Event::MappingStart(..) => {
                let path = self.place_node(line).unwrap_or_default();
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.place_node(line).unwrap_or_default();
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_keys_and_items() {
        let src = "listeners:\n  inbound:\n    port: 4143\nclusters:\n  - name: a\n    endpoints:\n      - address: 1.2.3.4:80\n";
        let index = LineIndex::build(src);
        assert_eq!(index.line_of("listeners.inbound.port"), Some(3));
        assert_eq!(index.line_of("clusters[0].name"), Some(5));
        assert_eq!(index.line_of("clusters[0].endpoints[0].address"), Some(7));
        assert_eq!(index.line_of("clusters[0].endpoints[0].weight"), Some(7));
    }
}
