package webhook

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

var podKind = metaKind("", "Pod")

func metaKind(group, kind string) metav1.GroupVersionKind {
	return metav1.GroupVersionKind{Group: group, Version: "v1", Kind: kind}
}
