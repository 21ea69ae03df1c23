// Package rows is what is left of the command's row files package, which
// is now public as github.com/amlpool/amlpool/rows. Text stays here for the
// code that still imports this path; new code uses the public package.
package rows

import "github.com/amlpool/amlpool/rows"

// Text returns a cell as CSV text; see rows.Text.
func Text(v any) string { return rows.Text(v) }
