package webhook

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestClaimCheck(t *testing.T) {
	cases := []struct {
		name        string
		exists      bool
		err         error
		wantAllowed bool
		want        string
	}{
		{"claim exists", true, nil, true, ""},
		{"claim missing", false, nil, false, `annotation pmem.alibabacloud.com/claim="redis-pmem-data" is invalid: PersistentVolumeClaim "redis-pmem-data" not found in namespace "default"`},
		{"apiserver unreachable", false, errors.New("connection refused"), true, `could not verify that PersistentVolumeClaim "redis-pmem-data" exists`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newTestHandler(t)
			var asked []string
			h.Claims = ClaimLookupFunc(func(_ context.Context, ns, name string) (bool, error) {
				asked = append(asked, ns+"/"+name)
				return tc.exists, tc.err
			})
			body, _ := readFixture(t, "claim")
			review, code := serve(t, h, body)
			if code != http.StatusOK || review.Response.Allowed != tc.wantAllowed {
				t.Fatalf("code %d, response %+v; want allowed=%v", code, review.Response, tc.wantAllowed)
			}
			if len(asked) != 1 || asked[0] != "default/redis-pmem-data" {
				t.Errorf("looked up %q, want [default/redis-pmem-data]", asked)
			}
			got := strings.Join(review.Response.Warnings, "\n")
			if !tc.wantAllowed {
				got = review.Response.Result.Message
			}
			if tc.want != "" && !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want it to contain %q", got, tc.want)
			}
		})
	}
}

// Pods without the claim annotation never cost a lookup.
func TestClaimCheckOnlyForClaims(t *testing.T) {
	h, _ := newTestHandler(t)
	h.Claims = ClaimLookupFunc(func(context.Context, string, string) (bool, error) {
		t.Error("lookup for a pod without a claim annotation")
		return false, nil
	})
	body, _ := readFixture(t, "redis-single")
	if review, _ := serve(t, h, body); !review.Response.Allowed {
		t.Fatalf("denied: %+v", review.Response.Result)
	}
}
