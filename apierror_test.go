package amlpool_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/amlpool/amlpool"
)

// TestAPIErrorShowsTheMostSpecificMessage: the service's error.message is
// often its class's generic text; a detail's message holds the cause.
func TestAPIErrorShowsTheMostSpecificMessage(t *testing.T) {
	const generic = "Module execution encountered an internal library error."
	tests := []struct {
		name       string
		err        amlpool.APIError
		wantReason string
		wantError  string
	}{
		{"a detail's message over the generic one",
			amlpool.APIError{Endpoint: "east", StatusCode: 400, Code: "LibraryExecutionError", Message: generic,
				Details: []amlpool.ErrorDetail{{Code: "FailedToEvaluateRScript", Message: "object 'x' not found"}}},
			"object 'x' not found",
			"amlpool: endpoint east: HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: object 'x' not found"},
		{"the first detail with a message",
			amlpool.APIError{Endpoint: "east", StatusCode: 400, Code: "BadUserArgument", Message: "Invalid user argument provided.",
				Details: []amlpool.ErrorDetail{{Code: "InputParseError"}, {Code: "InputMismatchError", Message: "Input data does not match input port schema."}}},
			"Input data does not match input port schema.",
			"amlpool: endpoint east: HTTP 400 BadUserArgument/InputParseError: Input data does not match input port schema."},
		{"no detail message: the top one",
			amlpool.APIError{Endpoint: "west", StatusCode: 503, Code: "InitializingContainers", Message: "The request cannot execute as the containers are being initialized."},
			"The request cannot execute as the containers are being initialized.",
			"amlpool: endpoint west: HTTP 503 InitializingContainers: The request cannot execute as the containers are being initialized."},
		{"no service error body",
			amlpool.APIError{Endpoint: "west", StatusCode: 502, Body: "<html>Bad Gateway</html>"},
			"",
			`amlpool: endpoint west: HTTP 502: "<html>Bad Gateway</html>"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.wantReason, tt.err.Reason())
			assert.EqualError(t, &tt.err, tt.wantError)
		})
	}
}
