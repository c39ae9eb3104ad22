package main

import (
	"strings"
	"testing"
)

// Bad configuration stops the server before it listens, with a message
// naming the setting.
func TestRunRejectsBadFlags(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--size-factor=0"}, "sizeFactor 0"},
		{[]string{"--lib-dir=relative"}, `libDir "relative"`},
		{[]string{"--kmem-node-selector=nokey"}, `entry "nokey" is not key=value`},
		{[]string{"--service-name=x"}, "--service-name only apply with --self-signed"},
		{[]string{"stray"}, `unexpected arguments ["stray"]`},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := run(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}
