package chaos

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, ignoreToxiproxy, ignoreToxiproxyWriter) }

// ignoreToxiproxy leaves toxiproxy's own goroutines out of leak checks.
// toxiproxy v2.12.0 leaves a toxic's goroutine blocked on a channel send
// when the connection it relayed closes under it (ToxicStub.Run, in this
// process), and with it, now and then, the link's writer still reading the
// chain's output (ToxicLink.write); those belong to the test's network, not
// to amlpool, whose goroutines are still all checked.
var ignoreToxiproxy = goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run")

var ignoreToxiproxyWriter = goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).write")
