package clients

import (
	"slices"
	"strings"
	"testing"
)

func TestBlocks(t *testing.T) {
	doc := strings.Join([]string{
		"# Title",
		"```console",
		"$ not-in-section",
		"```",
		"## Install",
		"Prose with `$ inline` is not a command.",
		"```console",
		"$ kubectl apply -k deploy/default     # a comment",
		"output line",
		"$ helm install x chart -n ns",
		"```",
		"```console",
		"no command in this block",
		"```",
		"### Sub-section belongs to Install",
		"```sh",
		"# a shell comment, not a heading",
		"$ make install-plugin && kubectl plugin list",
		"```",
		"## Next",
		"```console",
		"$ after-section",
		"```",
	}, "\n")
	for _, tc := range []struct {
		heading string
		want    [][]string
		wantErr bool
	}{
		{"## Install", [][]string{{"kubectl apply -k deploy/default", "helm install x chart -n ns"}, {"make install-plugin && kubectl plugin list"}}, false},
		{"## Next", [][]string{{"after-section"}}, false},
		{"# Title", [][]string{{"not-in-section"}, {"kubectl apply -k deploy/default", "helm install x chart -n ns"}, {"make install-plugin && kubectl plugin list"}, {"after-section"}}, false},
		{"## Missing", nil, true},
	} {
		t.Run(tc.heading, func(t *testing.T) {
			got, err := Blocks([]byte(doc), tc.heading)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal[[]string]) {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestMissing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		want, got map[string]any
		diffs     int
	}{
		{"equal", map[string]any{"a": int64(1)}, map[string]any{"a": float64(1)}, 0},
		{"server adds fields", map[string]any{"a": "x"}, map[string]any{"a": "x", "b": "y"}, 0},
		{"field dropped", map[string]any{"a": "x", "readOnly": false}, map[string]any{"a": "x"}, 1},
		{"value changed", map[string]any{"a": map[string]any{"b": "x"}}, map[string]any{"a": map[string]any{"b": "y"}}, 1},
		{"list element subset", map[string]any{"l": []any{map[string]any{"n": "x"}}}, map[string]any{"l": []any{map[string]any{"n": "x", "d": 1}}}, 0},
		{"list length differs", map[string]any{"l": []any{"x"}}, map[string]any{"l": []any{"x", "y"}}, 1},
		{"type differs", map[string]any{"a": map[string]any{}}, map[string]any{"a": "x"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diffs, err := Missing(tc.want, tc.got)
			if err != nil {
				t.Fatal(err)
			}
			if len(diffs) != tc.diffs {
				t.Errorf("diffs %q, want %d", diffs, tc.diffs)
			}
		})
	}
}
