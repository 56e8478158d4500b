package change

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// AppendEvent appends ev to the encoding of a ChangeBatch: a batch is its
// events' encodings, each as field 1, so batches grow without re-encoding.
// On an error the batch is returned as it was.
func AppendEvent(batch []byte, ev *sluicev1.ChangeEvent) ([]byte, error) {
	size, orig := proto.Size(ev), len(batch)
	batch = protowire.AppendTag(batch, 1, protowire.BytesType)
	batch = protowire.AppendVarint(batch, uint64(size))
	out, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(batch, ev)
	if err != nil {
		return batch[:orig], fmt.Errorf("encode change: %w", err) // the batch as it was
	}
	return out, nil
}

// Events decodes a stream message: a ChangeBatch.
func Events(data []byte) ([]*sluicev1.ChangeEvent, error) {
	var b sluicev1.ChangeBatch
	if err := proto.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("decode change batch: %w", err)
	}
	return b.Events, nil
}

// CountEvents counts the events of an encoded ChangeBatch without decoding
// them; -1 when it is malformed.
func CountEvents(data []byte) int {
	n := 0
	for len(data) > 0 {
		num, typ, l := protowire.ConsumeTag(data)
		if l < 0 {
			return -1
		}
		data = data[l:]
		l = protowire.ConsumeFieldValue(num, typ, data)
		if l < 0 {
			return -1
		}
		data = data[l:]
		if num == 1 {
			n++
		}
	}
	return n
}
