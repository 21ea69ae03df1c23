package main

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/amlpool/amlpool/rows"
)

func TestRejectColumnsAvoidTheInputs(t *testing.T) {
	assert.Equal(t, []string{"line", "row", "error", "id"}, rejectColumns(rows.CSV, []string{"id"}))
	assert.Equal(t, []string{"_line", "row", "__error", "text", "line", "error", "_error"},
		rejectColumns(rows.JSONL, []string{"line", "error", "_error"}), "no name twice: a JSON Lines object could not be read back")
}
