//! The documentation's links work and stay inside the repository: every relative link of every
//! Markdown file (README.md, docs/, and the READMEs next to the code) names a file or folder that
//! exists, and every `#anchor` names a heading of its target, as GitHub renders it. The README
//! stays a front page, and nothing cites the design from outside the repository.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use formstream_tests::deploy::{read_repo_file, repo_root};
use pulldown_cmark::{Event, Parser, Tag, TagEnd};

/// The README's length at most: it is the front page, and the reference lives in docs/.
const README_MAX_LINES: usize = 250;

/// Every file of the repository, relative to its root, sorted (build output and hidden folders,
/// such as `.local/` and `.git/`, skipped).
fn repo_files() -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, found);
            } else if let Ok(relative) = path.strip_prefix(root) {
                found.push(relative.to_path_buf());
            }
        }
    }
    let root = repo_root();
    let mut found = Vec::new();
    walk(&root, &root, &mut found);
    found.sort();
    found
}

/// Every Markdown file of the repository.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = repo_files();
    files.retain(|file| file.extension().is_some_and(|e| e == "md"));
    files
}

/// A heading's anchor as GitHub makes it: lower case, every character that is not a letter, a
/// digit, `_`, `-` or a space dropped (backticks, dots, brackets, ...), spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// What one Markdown file offers and asks for.
struct Page {
    /// Anchors of its headings; a repeated heading gets `-1`, `-2`, ... as on GitHub.
    anchors: BTreeSet<String>,
    /// Link destinations, as written.
    links: Vec<String>,
}

fn parse(text: &str) -> Page {
    let mut anchors = BTreeSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(text) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let count = seen.entry(base.clone()).or_insert(0);
                anchors.insert(match *count {
                    0 => base.clone(),
                    n => format!("{base}-{n}"),
                });
                *count += 1;
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push(dest_url.into_string());
            }
            Event::Html(html) | Event::InlineHtml(html) => {
                // Explicit anchors: <a id="..."> or <a name="...">.
                for attribute in ["id=\"", "name=\""] {
                    if let Some(start) = html.find(attribute) {
                        let rest = &html[start + attribute.len()..];
                        if let Some(end) = rest.find('"') {
                            anchors.insert(rest[..end].to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Page { anchors, links }
}

/// `path` with `.` and `..` resolved, or None when it climbs above its start.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every problem with `link`, written in `file` (relative to the root).
fn check_link(file: &Path, link: &str, pages: &HashMap<PathBuf, Page>) -> Option<String> {
    let external = ["http://", "https://", "mailto:"];
    if external.iter().any(|scheme| link.starts_with(scheme)) {
        return None;
    }
    let (path, anchor) = match link.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (link, None),
    };
    let target = if path.is_empty() {
        file.to_path_buf()
    } else {
        let joined = file.parent().unwrap_or(Path::new("")).join(path);
        match normalise(&joined) {
            Some(target) => target,
            None => {
                return Some(format!(
                    "{}: `{link}` points outside the repository",
                    file.display()
                ));
            }
        }
    };
    if !repo_root().join(&target).exists() {
        return Some(format!(
            "{}: `{link}`: {} does not exist",
            file.display(),
            target.display()
        ));
    }
    let anchor = anchor?;
    match pages.get(&target) {
        Some(page) if page.anchors.contains(anchor) => None,
        Some(_) => Some(format!(
            "{}: `{link}`: {} has no heading with the anchor #{anchor}",
            file.display(),
            target.display()
        )),
        None => Some(format!(
            "{}: `{link}`: an anchor into {}, which is not Markdown",
            file.display(),
            target.display()
        )),
    }
}

#[test]
fn every_markdown_link_and_anchor_works() {
    let files = markdown_files();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    for expected in [
        "README.md",
        "docs/api.md",
        "docs/configuration.md",
        "docs/design.md",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not found in {names:?}"
        );
    }
    let pages: HashMap<PathBuf, Page> = files
        .iter()
        .map(|file| {
            (
                file.clone(),
                parse(&read_repo_file(&file.display().to_string())),
            )
        })
        .collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        for link in &pages[file].links {
            checked += 1;
            problems.extend(check_link(file, link, &pages));
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser reading the files?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_finds_broken_links_and_anchors() {
    let mut pages = HashMap::new();
    pages.insert(
        PathBuf::from("docs/api.md"),
        parse("# The HTTP API\n## `formstream process <processor>`\n## Calls\n## Calls\n"),
    );
    let file = Path::new("docs/api.md");
    for good in [
        "#calls",
        "#calls-1",
        "#formstream-process-processor",
        "#the-http-api",
        "https://x.org/#y",
    ] {
        assert_eq!(check_link(file, good, &pages), None, "{good}");
    }
    for bad in [
        "#nope",
        "missing.md",
        "../../elsewhere.md",
        "api.md#calls-2",
    ] {
        assert!(check_link(file, bad, &pages).is_some(), "{bad} passed");
    }
    let page = parse("See [a](x.md#b) and `[not](a-link.md)`.\n\n```\n[nor](this.md)\n```\n");
    assert_eq!(page.links, ["x.md#b"]);
}

#[test]
fn the_readme_is_a_front_page() {
    let lines = read_repo_file("README.md").lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; the reference belongs in docs/ (at most {README_MAX_LINES})"
    );
}

#[test]
fn nothing_cites_the_design_from_outside_the_repository() {
    // Spelled in two pieces so that this file does not match itself.
    let outside = [concat!("DESIGN", ".md"), concat!("../", "shared/")];
    let text_kinds = ["rs", "md", "sh", "toml", "yml", "yaml", "json", "avsc"];
    let mut found = Vec::new();
    for file in repo_files() {
        if !file
            .extension()
            .is_some_and(|e| text_kinds.iter().any(|k| e == *k))
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(repo_root().join(&file)) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o)) {
                found.push(format!("{}:{}: {line}", file.display(), number + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cite docs/design.md instead:\n{}",
        found.join("\n")
    );
}
