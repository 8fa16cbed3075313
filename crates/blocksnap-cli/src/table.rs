//! Tables and counts for people: the one place that lays out columns and says "1 snapshot",
//! "2 snapshots".

/// A table of text cells: columns as wide as their widest cell (header included), two spaces
/// apart, left-aligned unless marked right-aligned; no line ends in a space.
pub(crate) struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_string()).collect(),
            right: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// Aligns these columns (by index) to the right: sizes and counts.
    pub(crate) fn right(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// The header line and one line per row, joined by newlines (no newline at the end).
    pub(crate) fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                std::iter::once(&self.header[c])
                    .chain(self.rows.iter().map(|r| &r[c]))
                    .map(|s| width(s))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c > 0 {
                    l += "  ";
                }
                let pad = " ".repeat(widths[c] - width(cell));
                if self.right[c] {
                    l += &pad;
                    l += cell;
                } else {
                    l += cell;
                    l += &pad;
                }
            }
            l.trim_end().to_string()
        };
        std::iter::once(line(&self.header))
            .chain(self.rows.iter().map(|r| line(r)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `name  value` lines, the values lined up after the longest name; an empty value shows as
/// `-`. For `show` commands.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            let v = if v.is_empty() { "-" } else { v.as_str() };
            format!("{k:<width$}  {v}").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tags as `k=v,k=v` (empty for none).
pub(crate) fn tags<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    tags.into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `n` and the noun, singular for one: `count(1, "snapshot")` is "1 snapshot", `count(2,
/// "snapshot")` "2 snapshots"; nouns ending in a consonant and `y` take "ies" ("entries").
pub(crate) fn count(n: u64, noun: &str) -> String {
    format!("{n} {}", plural(n, noun))
}

/// The noun, singular for one, else its plural.
pub(crate) fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        return noun.to_string();
    }
    match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_widest_cell_and_lines_do_not_end_in_spaces() {
        let mut t = Table::new(&["NAME", "SIZE", "TAGS"]).right(&[1]);
        t.row(["a-very-long-volume-name-indeed", "1.0 MiB", ""]);
        t.row(["b", "10.0 GiB", "env=prod"]);
        assert_eq!(
            t.render(),
            "NAME                                SIZE  TAGS\n\
             a-very-long-volume-name-indeed   1.0 MiB\n\
             b                               10.0 GiB  env=prod"
        );
        assert_eq!(Table::new(&["ID", "X"]).render(), "ID  X");
    }

    #[test]
    fn counts_say_one_in_the_singular() {
        assert_eq!(count(1, "snapshot"), "1 snapshot");
        assert_eq!(count(0, "snapshot"), "0 snapshots");
        assert_eq!(count(2, "entry"), "2 entries");
        assert_eq!(count(1, "entry"), "1 entry");
        assert_eq!(count(3, "key"), "3 keys");
    }

    #[test]
    fn fields_line_up_their_values() {
        assert_eq!(
            fields(&[("id", "snap-1".into()), ("description", String::new())]),
            "id           snap-1\ndescription  -"
        );
    }
}
