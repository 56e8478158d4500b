package fragment

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/testenv"
)

func TestSplit(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 35} {
		data := bytes.Repeat([]byte{'x'}, n)
		parts := Split(data, 10)
		if got := bytes.Join(parts, nil); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: joined %d", n, len(got))
		}
		for i, p := range parts {
			if len(p) > 10 || len(p) == 0 && n > 0 || i < len(parts)-1 && len(p) != 10 {
				t.Fatalf("%d bytes: part %d of %d holds %d", n, i, len(parts), len(p))
			}
		}
	}
}

// Through a server with the default max_payload (1 MiB): a payload of
// several MiB goes out in fragments and comes back whole; a small one goes
// as it is; a payload whose fragment is gone says so.
func TestPublishAndPayload(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"S.msgs", "S.fragments.*"}})
	if err != nil {
		t.Fatal(err)
	}
	room := Room(js.Conn().MaxPayload())
	if room >= 1<<20 || room < 1<<19 {
		t.Fatalf("room %d on a server allowing %d", room, js.Conn().MaxPayload())
	}
	big := make([]byte, 5<<20+123)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for _, data := range [][]byte{[]byte("small"), big} {
		frags, err := Publish(ctx, js, &nats.Msg{Subject: "S.msgs", Data: data}, "S.fragments.0", room)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(data) > room; want != (len(frags) > 0) {
			t.Fatalf("%d bytes: %d fragments", len(data), len(frags))
		}
		m, err := st.GetLastMsgForSubject(ctx, "S.msgs")
		if err != nil {
			t.Fatal(err)
		}
		got, err := Payload(ctx, st, m.Header, m.Data)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back %d (%v)", len(data), len(got), err)
		}
		if len(frags) > 0 {
			if err := st.DeleteMsg(ctx, frags[1]); err != nil {
				t.Fatal(err)
			}
			if _, err := Payload(ctx, st, m.Header, m.Data); !errors.Is(err, ErrMissing) {
				t.Fatalf("with a fragment deleted: %v", err)
			}
		}
	}
	// A header that names a message other than a fragment is not followed.
	first, err := st.GetMsg(ctx, 1)
	if err != nil || first.Subject != "S.msgs" {
		t.Fatalf("first message: %v, %v", first, err)
	}
	h := nats.Header{}
	SetHeader(h, []uint64{1})
	if _, err := Payload(ctx, st, h, nil); !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "not a fragment") {
		t.Fatalf("a header naming S.msgs: %v", err)
	}
}
