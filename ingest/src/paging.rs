//! Paged listings of the API (flags, dead letters): the `limit` and `after` query parameters, and
//! cutting one page with the cursor of the next.
//!
//! Invariant: a page holds at most `limit` items, from 1 to [`MAX_LIMIT`]; its next cursor is that
//! of its last item, and is `None` exactly when no item follows, so a client that passes each
//! `next_cursor` back as `after` reads every item once and knows when it is done. A bad `limit` or
//! `after` is a problem at `/limit` or `/after`, reported with the query's other problems.

use formstream_core::problem::FieldProblem;

/// Items per page when the client does not say.
// Enough for a collector's screen; small enough that a page is a quick answer.
pub const DEFAULT_LIMIT: usize = 50;
/// Most items per page: bounds the work and the answer of one request.
pub const MAX_LIMIT: usize = 500;

/// A page's `limit` parameter: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent; anything else
/// is a problem at `/limit` (and the default).
pub(crate) fn limit(text: Option<&str>, problems: &mut Vec<FieldProblem>) -> usize {
    match text.map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            problems.push(FieldProblem::new(
                "/limit",
                "invalid_limit",
                format!("limit is a whole number from 1 to {MAX_LIMIT}"),
            ));
            DEFAULT_LIMIT
        }
    }
}

/// A page's `after` parameter read by `parse`, the listing's cursor reader; one it cannot read is
/// a problem at `/after` (and no cursor).
pub(crate) fn after<C>(
    text: Option<&str>,
    parse: impl FnOnce(&str) -> Option<C>,
    problems: &mut Vec<FieldProblem>,
) -> Option<C> {
    let text = text?;
    let cursor = parse(text);
    if cursor.is_none() {
        problems.push(FieldProblem::new(
            "/after",
            "invalid_cursor",
            "after takes the next_cursor of a previous page, unchanged",
        ));
    }
    cursor
}

/// The first `limit` of `items` (already past the client's cursor), and the cursor of the last of
/// them when more follow.
pub(crate) fn page<T, C>(
    items: impl IntoIterator<Item = T>,
    limit: usize,
    cursor: impl FnOnce(&T) -> C,
) -> (Vec<T>, Option<C>) {
    let mut items = items.into_iter();
    let page: Vec<T> = items.by_ref().take(limit).collect();
    let next = match (page.last(), items.next()) {
        (Some(last), Some(_)) => Some(cursor(last)),
        _ => None,
    };
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_names_the_next_one_only_when_items_follow() {
        assert_eq!(page(1..=5, 2, |n| *n), (vec![1, 2], Some(2)));
        assert_eq!(page(1..=4, 2, |n| *n), (vec![1, 2], Some(2)));
        assert_eq!(page(3..=4, 2, |n| *n), (vec![3, 4], None));
        assert_eq!(page(1..=1, 2, |n| *n), (vec![1], None));
        assert_eq!(page(std::iter::empty::<i32>(), 2, |n| *n), (vec![], None));
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        let mut problems = Vec::new();
        assert_eq!(limit(None, &mut problems), DEFAULT_LIMIT);
        assert_eq!(limit(Some("500"), &mut problems), 500);
        assert!(problems.is_empty());
        assert_eq!(limit(Some("0"), &mut problems), DEFAULT_LIMIT);
        assert_eq!(limit(Some("501"), &mut problems), DEFAULT_LIMIT);
        assert_eq!(after(None, |_| Some(1), &mut problems), None);
        assert_eq!(
            after(Some("7"), |t| t.parse::<i32>().ok(), &mut problems),
            Some(7)
        );
        assert_eq!(
            after(Some("x"), |t| t.parse::<i32>().ok(), &mut problems),
            None
        );
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(pointers, ["/limit", "/limit", "/after"]);
    }
}
